"""Embedding prepared inputs with a model, in chunks: what validation, ``evaluate_run`` and
:class:`~molphenix.train.TrainedModel` share."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["embed_wells_prepared", "embed_molecule_rows"]


def embed_wells_prepared(model: Any, x: np.ndarray, input_scale: float, device: Any,
                         chunk: int = 8192) -> Any:
    """Model embeddings of already preprocessed (centered, averaged) phenomic rows.

    Args:
        model: A :class:`~molphenix.nn.MolPhenixModel` (``encode_wells``).
        x: Preprocessed phenomic rows [N, E].
        input_scale: The run's input scale (the model sees ``x / input_scale``).
        device: Where the model runs.
        chunk: Rows per forward pass.

    Returns:
        float32 tensor [N, D] on ``device``.
    """
    import torch

    outs = []
    for s in range(0, x.shape[0], chunk):
        xb = torch.as_tensor(np.ascontiguousarray(x[s : s + chunk]), dtype=torch.float32, device=device)
        outs.append(model.encode_wells(xb / input_scale).float())
    if not outs:
        return torch.zeros(0, model.config.embed_dim)
    return torch.cat(outs)


def embed_molecule_rows(model: Any, mols: Any, rows: np.ndarray, conc: np.ndarray, device: Any,
                        chunk: int = 8192) -> Any:
    """Model embeddings of (molecule row, concentration) pairs.

    Args:
        model: A :class:`~molphenix.nn.MolPhenixModel` (``encode_molecules``).
        mols: A :class:`~molphenix.train.inputs.MolTable` (``batch(rows, device)``).
        rows: Rows of ``mols`` [N].
        conc: Concentrations in µM [N].
        device: Where the model runs.
        chunk: Pairs per forward pass.

    Returns:
        float32 tensor [N, D] on ``device``.
    """
    import torch

    outs = []
    conc = np.asarray(conc, dtype=np.float32)
    for s in range(0, len(rows), chunk):
        mb = mols.batch(rows[s : s + chunk], device)
        cb = torch.from_numpy(np.ascontiguousarray(conc[s : s + chunk])).to(device)
        outs.append(model.encode_molecules(mb, cb).float())
    if not outs:
        return torch.zeros(0, model.config.embed_dim)
    return torch.cat(outs)
