"""``molphenix embed-library``: a trained run's molecular head over a molecule library of any size.

``embed-library --run RUN --molecules FILE --out LIB`` streams FILE (Parquet, CSV, CSV.gz or a
``.smi`` SMILES file) in chunks through the run's featurizer (worker processes) and molecular head,
and writes LIB: a library directory (any name) that :meth:`molphenix.retrieval.Index.load` opens in
milliseconds (:mod:`molphenix.retrieval.library`). Memory does not grow with the library. A killed
run continues from its last finished chunk when the same command is run again; ``--overwrite``
starts over. Under ``torchrun`` every rank embeds its own chunks into the same LIB. An OUT ending in
``.parquet`` writes one Parquet index file instead.

Rows are (molecule, concentration) pairs: the file's ``concentration_um`` column, else
``--concentrations``, else every dose of the run's dose set. Ids are ``"<molecule_id>@<µM>"``; the
library also keeps ``molecule_id``, ``smiles`` and ``concentration_um``. Invalid SMILES, repeated
ids and invalid concentrations are skipped into LIB/rejects.csv with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import typer

from molphenix.cli._errors import data_error, positive_int, threads_option, usage_error

__all__ = ["embed_library_command", "run_fingerprint"]


def run_fingerprint(tm: Any) -> Dict[str, Any]:
    """What identifies a run's molecular embedding: the checkpoint's sha256, the run's
    featurizer state and model config (a resumed embed-library must match it)."""
    from molphenix.data.molecule_stream import file_sha256

    ck = Path(tm.checkpoint) if tm.checkpoint else None
    return {"checkpoint_sha256": file_sha256(ck) if ck is not None and ck.is_file() else None,
            "features": tm.features.state(), "model_config": tm.meta.get("model_config")}


def _featurizer(tm: Any):
    """(picklable featurizer for the worker processes, feature column or None)."""
    from molphenix.data import featurize as fz

    f = tm.features
    if f.kind == "graph":
        return fz.GraphFeaturizer(), None
    if f.kind == "column":
        return None, f.column
    return fz.featurizer_from_state(f.state()), None


def _embedder(tm: Any):
    import torch

    model, device = tm.model, tm.device
    graph = tm.features.is_graph

    def embed(batch: Any, conc: np.ndarray) -> "torch.Tensor":
        with torch.no_grad():
            if graph:
                from molphenix.data.featurize import collate_graphs

                mb = collate_graphs(batch).to(device)
            else:
                mb = torch.from_numpy(batch).to(device)
            cb = torch.from_numpy(np.ascontiguousarray(conc, dtype=np.float32)).to(device)
            return model.encode_molecules(mb, cb).float()

    return embed


def embed_library_command(
    run: Path = typer.Option(..., "--run", help="Trained run directory (molphenix train --out)."),
    molecules: Path = typer.Option(..., "--molecules", help="Parquet, CSV, CSV.gz or .smi file: smiles, optional molecule_id and concentration_um."),
    out: Path = typer.Option(..., "--out", help="Library to write: a directory (any name; Index.load opens it), or a .parquet file."),
    concentrations: Optional[str] = typer.Option(None, "--concentrations", help="Comma-separated µM for every molecule (default: the file's concentration_um, else the run's dose set)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (default) or last."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace a finished or unfinished library at --out."),
    storage: str = typer.Option("float32", "--storage", help="Row precision on disk: float32 (default) or float16 (half the size; scores change by about 1e-3)."),
    chunk_rows: int = typer.Option(10_000, "--chunk-rows", callback=positive_int, help="Input rows per chunk: the unit of streaming and of resumption."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Featurizing processes (default: the usable CPUs; 0: featurize in this process)."),
    threads: Optional[int] = threads_option("threads of the embedding forward passes (default: torch's)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with molecules/s and the ETA."),
) -> None:
    """Embed (molecule, concentration) pairs with RUN's molecular head into a library, streamed."""
    from molphenix.distributed import process_group

    with process_group():
        _embed_library(run, molecules, out, concentrations, checkpoint, overwrite, storage,
                       chunk_rows, workers, threads, progress)


def _embed_library(run: Path, molecules: Path, out: Path, concentrations: Optional[str],
                   checkpoint: str, overwrite: bool, storage: str, chunk_rows: int,
                   workers: Optional[int], threads: Optional[int], progress: bool) -> None:
    from molphenix._version import __version__
    from molphenix.cli.retrieve import _load_run, _parse_concentrations
    from molphenix.distributed import is_main
    from molphenix.retrieval.library import LibraryBuildError, embed_library

    if storage not in ("float32", "float16"):
        usage_error("--storage", f"must be float32 or float16, got {storage!r}")
    if workers is not None and workers < 0:
        usage_error("--workers", f"must be >= 0, got {workers}")
    if not molecules.is_file():
        usage_error("--molecules", f"{molecules}: file not found")
    conc = _parse_concentrations(concentrations)
    tm = _load_run(run, checkpoint)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    featurizer, column = _featurizer(tm)
    if workers is None and getattr(featurizer, "cache_key", lambda: "x")() == "" and column is None:
        # A pretrained encoder (its own threads, and a cache shared by every process) runs in
        # this process: worker processes would each load the model.
        workers = 0
    doses = conc
    from molphenix.data.molecule_stream import MoleculeFileError, scan_molecules

    try:  # the doses depend on whether the file has concentrations (a quick look at its header)
        has_conc = "concentration_um" in scan_molecules(molecules, duplicates=False,
                                                         checksum=False).columns
    except MoleculeFileError as exc:
        usage_error("--molecules", str(exc))
    if not has_conc and doses is None:
        doses = list(tm.doses)
        if not doses:
            usage_error("--concentrations", "the run has no dose set and the file no "
                                            "concentration_um column; pass --concentrations")
    info = {"created_by": "molphenix embed-library", "molphenix": __version__,
            "run": str(Path(run).resolve()), "checkpoint": Path(tm.checkpoint).name if tm.checkpoint else None,
            "step": int(tm.step), "mol_input": tm.features.mol_input,
            "source": str(Path(molecules).resolve())}
    try:
        summary = embed_library(molecules, out, featurizer=featurizer, embed=_embedder(tm),
                                dim=tm.embed_dim, doses=doses, chunk_rows=chunk_rows,
                                workers=workers, storage=storage, overwrite=overwrite,
                                fingerprint=run_fingerprint(tm), info=info,
                                feature_column=column, progress=progress,
                                say=lambda m: typer.echo(m, err=True))
    except LibraryBuildError as exc:
        if exc.usage:
            usage_error(exc.flag, str(exc))
        data_error(exc.flag, str(exc))
    if not is_main() or not summary.complete:
        return
    s = summary
    if s.already_complete:
        typer.echo(f"{out} is already complete: {s.rows:,} rows from {s.molecules:,} molecules "
                   "(nothing to do; --overwrite starts over)")
        return
    rej = ""
    if s.rejected:
        kinds = ", ".join(f"{v:,} {k}" for k, v in s.reasons.items())
        rej = f"; {s.rejected:,} rows rejected ({kinds}; see {s.rejects_path})"
    resumed = f", {s.chunks_resumed} of {s.chunks} chunks resumed" if s.chunks_resumed else ""
    typer.echo(f"wrote {out}: {s.rows:,} (molecule, concentration) rows from {s.molecules:,} of "
               f"{s.input_rows:,} input rows, D = {s.dim}, {s.storage}{rej}; {s.seconds:.1f} s "
               f"({s.rate:,.0f} molecules/s{resumed})")
