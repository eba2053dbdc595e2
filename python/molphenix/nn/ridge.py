"""The ridge baseline's model: predicted phenotypes as molecule embeddings.

:class:`RidgeModel` is what :func:`molphenix.baselines.fit_ridge` fits (closed-form ridge from
molecular features and a dose encoding to the control-centered phenotype; the fit lives in
:mod:`molphenix.baselines.ridge`). It has the interface of a run's model (``encode_wells``,
``encode_molecules``, ``config.embed_dim``), so :func:`molphenix.train.load_run` loads a run of the
baseline like any other run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["RidgeModel", "RidgeShape", "dose_onehot"]

_MODEL_FILE = "ridge.pt"
_CONFIG_FILE = "ridge_config.json"


@dataclass(frozen=True)
class RidgeShape:
    """The widths of a :class:`RidgeModel` (what callers of a run's model read from its config).

    Attributes:
        phenomic_dim: E, the phenomic input width.
        embed_dim: The embedding width (E: the predicted phenotype is the molecule embedding).
        molecular_dim: F, the molecular feature width.
        mol_input: The featurizer name.
    """

    phenomic_dim: int
    embed_dim: int
    molecular_dim: int
    mol_input: str


def dose_onehot(conc: np.ndarray, doses: np.ndarray) -> np.ndarray:
    """One-hot of each concentration's nearest dose in log10 space.

    Shapes:
        conc: [n] (µM, > 0); doses: [K] -> [n, K] float64

    Raises:
        ValueError: a concentration that is not a positive finite number.
    """
    conc = np.asarray(conc, dtype=np.float64)
    if conc.size and not (np.all(np.isfinite(conc)) and np.all(conc > 0)):
        raise ValueError("concentration_um: expected positive finite concentrations")
    idx = np.abs(np.log10(conc)[:, None] - np.log10(doses)[None, :]).argmin(axis=1)
    out = np.zeros((conc.shape[0], doses.shape[0]))
    out[np.arange(conc.shape[0]), idx] = 1.0
    return out


class RidgeModel(torch.nn.Module):
    """A fitted ridge anchor: predicted phenotypes as molecule embeddings.

    Buffers (float32): ``w_f`` [F, E] (shared map), ``w_fd`` [K, F, E] (per-dose maps), ``w_e``
    [K, E], ``w_l`` [E], ``bias`` [E]; ``doses`` [K] (float64, µM).

    Args:
        featurizer: Featurizer name; ``featurizer_kwargs``: its arguments; ``featurizer_stats``:
            fitted statistics of an ``rdkit2d`` featurizer (``mean``/``std`` lists) or None.
        alpha, lam: The chosen relative and absolute penalties (recorded).
    """

    def __init__(self, w_f: torch.Tensor, w_fd: torch.Tensor, w_e: torch.Tensor, w_l: torch.Tensor,
                 bias: torch.Tensor, doses: Sequence[float], *, featurizer: str = "morgan",
                 featurizer_kwargs: Optional[Dict[str, Any]] = None,
                 featurizer_stats: Optional[Dict[str, List[float]]] = None,
                 alpha: float = float("nan"), lam: float = float("nan")):
        super().__init__()
        self.register_buffer("w_f", w_f.float())
        self.register_buffer("w_fd", w_fd.float())
        self.register_buffer("w_e", w_e.float())
        self.register_buffer("w_l", w_l.float())
        self.register_buffer("bias", bias.float())
        self.doses = np.asarray(doses, dtype=np.float64)
        self.featurizer = featurizer
        self.featurizer_kwargs = dict(featurizer_kwargs or {})
        self.featurizer_stats = featurizer_stats
        self.alpha, self.lam = float(alpha), float(lam)

    # -- features -----------------------------------------------------------------------------

    def _featurizer(self):
        from molphenix.data.featurize import get_featurizer

        f = get_featurizer(self.featurizer, **self.featurizer_kwargs)
        if self.featurizer_stats is not None:
            f.mean_ = np.asarray(self.featurizer_stats["mean"])
            f.std_ = np.asarray(self.featurizer_stats["std"])
        return f

    def molecule_features(self, smiles: Sequence[str]) -> np.ndarray:
        """The featurizer's matrix for ``smiles`` (float32 [n, F]; invalid SMILES raise)."""
        from molphenix.data.featurize import featurize

        return featurize(list(smiles), self._featurizer())

    # -- embeddings ---------------------------------------------------------------------------

    def predict(self, features: Any, concentration_um: Any) -> torch.Tensor:
        """Predicted control-centered phenotypes (not normalized).

        Shapes:
            features: [n, F]; concentration_um: [n] -> [n, E] float32
        """
        if isinstance(features, torch.Tensor):
            f = features.detach().to(device=self.w_f.device, dtype=torch.float32)
        else:
            f = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.w_f.device)
        if f.ndim != 2 or f.shape[1] != self.w_f.shape[0]:
            raise ValueError(f"features: expected shape [n, {self.w_f.shape[0]}], got {tuple(f.shape)}")
        if isinstance(concentration_um, torch.Tensor):
            concentration_um = concentration_um.detach().cpu().numpy()
        conc = np.asarray(concentration_um, dtype=np.float64).reshape(-1)
        if conc.shape[0] != f.shape[0]:
            raise ValueError(f"concentration_um: expected {f.shape[0]} values, got {conc.shape[0]}")
        e = torch.as_tensor(dose_onehot(conc, self.doses), dtype=torch.float32, device=f.device)
        lg = torch.as_tensor(np.log10(conc), dtype=torch.float32, device=f.device)
        out = self.bias + f @ self.w_f + e @ self.w_e + lg[:, None] * self.w_l
        for k in range(self.w_fd.shape[0]):
            sel = e[:, k] > 0
            if bool(sel.any()):
                out[sel] += f[sel] @ self.w_fd[k]
        return out

    @torch.no_grad()
    def embed_molecules(self, smiles: Sequence[str], concentration_um: Any) -> torch.Tensor:
        """L2-normalized predicted phenotypes of (SMILES, concentration) pairs.

        Shapes:
            smiles, concentration_um: [n] -> [n, E] float32
        """
        return torch.nn.functional.normalize(self.predict(self.molecule_features(smiles), concentration_um), dim=1)

    @torch.no_grad()
    def embed_wells(self, x: Any) -> torch.Tensor:
        """L2-normalized control-centered phenomic embeddings (the query side is the identity).

        Shapes:
            x: [n, E] -> [n, E] float32
        """
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if t.ndim != 2 or t.shape[1] != self.w_f.shape[1]:
            raise ValueError(f"x: expected shape [n, {self.w_f.shape[1]}], got {tuple(t.shape)}")
        return torch.nn.functional.normalize(t, dim=1)

    # -- the model interface of a run (molphenix.train.load_run) ------------------------------

    @property
    def config(self) -> "RidgeShape":
        """Widths of the model, named as a :class:`molphenix.nn.ModelConfig` names them."""
        return RidgeShape(phenomic_dim=int(self.w_f.shape[1]), embed_dim=int(self.w_f.shape[1]),
                          molecular_dim=int(self.w_f.shape[0]), mol_input=self.featurizer)

    def encode_wells(self, x: torch.Tensor) -> torch.Tensor:
        """The query side: control-centered phenomic rows, L2-normalized (the identity map).

        Shapes:
            x: [n, E] -> [n, E]
        """
        return torch.nn.functional.normalize(x.float(), dim=1)

    def encode_molecules(self, features: torch.Tensor, concentration_um: torch.Tensor) -> torch.Tensor:
        """The candidate side: L2-normalized predicted phenotypes of featurized molecules.

        Shapes:
            features: [n, F]; concentration_um: [n] -> [n, E]
        """
        return torch.nn.functional.normalize(self.predict(features, concentration_um), dim=1)

    def forward(self, x: torch.Tensor, features: torch.Tensor, concentration_um: torch.Tensor):
        """``(encode_wells(x), encode_molecules(features, concentration_um))``."""
        return self.encode_wells(x), self.encode_molecules(features, concentration_um)

    def run_meta(self) -> Dict[str, Any]:
        """What :meth:`from_run_meta` needs to rebuild the model's shapes (stored in a run's
        ``run.json`` under ``"ridge"``; the weights go into its checkpoint)."""
        return {"feature_dim": int(self.w_f.shape[0]), "embedding_dim": int(self.w_f.shape[1]),
                "doses": self.doses.tolist(), "featurizer": self.featurizer,
                "featurizer_kwargs": self.featurizer_kwargs, "featurizer_stats": self.featurizer_stats,
                "alpha": self.alpha, "lambda": self.lam}

    @classmethod
    def from_run_meta(cls, meta: Dict[str, Any]) -> "RidgeModel":
        """A zero model with the shapes of :meth:`run_meta` (load the weights with
        ``load_state_dict``).

        Raises:
            ValueError: a key is missing.
        """
        try:
            F, E, doses = int(meta["feature_dim"]), int(meta["embedding_dim"]), list(meta["doses"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"run.json: the ridge entry lacks {exc}") from None
        K = len(doses)
        z = torch.zeros
        return cls(z(F, E), z(K, F, E), z(K, E), z(E), z(E), doses, featurizer=meta.get("featurizer", "morgan"),
                   featurizer_kwargs=meta.get("featurizer_kwargs"), featurizer_stats=meta.get("featurizer_stats"),
                   alpha=meta.get("alpha", float("nan")), lam=meta.get("lambda", float("nan")))

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``ridge.pt`` (tensors) and ``ridge_config.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (_MODEL_FILE + ".tmp")
        torch.save({k: v for k, v in self.state_dict().items()}, tmp)
        os.replace(tmp, d / _MODEL_FILE)
        meta = {"doses": self.doses.tolist(), "featurizer": self.featurizer,
                "featurizer_kwargs": self.featurizer_kwargs, "featurizer_stats": self.featurizer_stats,
                "alpha": self.alpha, "lambda": self.lam}
        (d / _CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "RidgeModel":
        """Read a model written by :meth:`save` (tensors loaded with ``weights_only=True``)."""
        d = Path(directory)
        meta = json.loads((d / _CONFIG_FILE).read_text())
        sd = torch.load(d / _MODEL_FILE, map_location="cpu", weights_only=True)
        return cls(sd["w_f"], sd["w_fd"], sd["w_e"], sd["w_l"], sd["bias"], meta["doses"],
                   featurizer=meta["featurizer"], featurizer_kwargs=meta["featurizer_kwargs"],
                   featurizer_stats=meta.get("featurizer_stats"), alpha=meta["alpha"], lam=meta["lambda"])
