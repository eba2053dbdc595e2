"""``molphenix embed-library`` and ``molphenix retrieve``: retrieval with a trained run.

``embed-library --run RUN --molecules FILE --out LIB.parquet`` embeds (molecule, concentration)
pairs with the run's molecular head into a :class:`molphenix.retrieval.Index` Parquet file
(``Index.load`` reads it). Besides the index's ``id`` (``"<molecule_id>@<concentration>"``) and
``embedding`` columns it keeps ``molecule_id``, ``smiles`` and ``concentration_um``.

``retrieve --run RUN --wells FILE (--library LIB | --molecules FILE) (--top-fraction F | --k K)
--out FILE`` embeds the treated wells of FILE (a wells Parquet in the documented schema, or a
dataset directory; each batch's control wells centre it, as in training) and writes, for every
treated well, its best candidates: columns ``query`` (the well_id), ``rank`` (0 = best),
``molecule_id``, ``concentration_um``, ``score`` (cosine), ``id``; Parquet or CSV by the
extension of ``--out``.

Under ``torchrun --nproc_per_node N -m molphenix retrieve ...`` the candidates are sharded across
the ranks (:class:`molphenix.distributed.ShardedIndex`; with ``--library`` each rank reads only
its rows), every rank embeds the wells, and rank 0 writes the same ``--out`` as one process.

Molecules FILE (Parquet or CSV): ``smiles`` (required), ``molecule_id`` (default: the SMILES),
``concentration_um`` (or ``--concentrations``; neither: every dose of the run's dose set).
Invalid SMILES are skipped and counted. Errors: one line naming the flag, exit 2
(:mod:`molphenix.cli._errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import typer

from molphenix.cli._errors import positive_int, usage_error

__all__ = ["retrieve_command", "register", "build_library", "read_molecules"]

_OUT_SUFFIXES = (".parquet", ".csv")


def _parse_concentrations(text: Optional[str]) -> Optional[List[float]]:
    if text is None:
        return None
    vals = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            usage_error("--concentrations", f"expected comma-separated numbers in µM, got {part!r}")
        if not (np.isfinite(v) and v > 0):
            usage_error("--concentrations", f"every concentration must be a finite number > 0 µM, got {part}")
        vals.append(v)
    if not vals:
        usage_error("--concentrations", "expected at least one concentration (µM), e.g. 0.25,1,2.5,10")
    return vals


def read_molecules(path: Path, flag: str = "--molecules") -> Any:
    """Read a molecules file (Parquet or CSV) as a pyarrow Table with string ids.

    Raises:
        CLIError: missing file, unknown extension, unreadable file, no ``smiles`` column.
    """
    import pyarrow as pa

    if not path.is_file():
        usage_error(flag, f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"molecule_id": pa.string(), "smiles": pa.string()}))
        else:
            usage_error(flag, f"{path}: expected a .parquet or .csv file")
    except (pa.ArrowException, OSError) as exc:
        usage_error(flag, f"{path}: cannot read ({str(exc).splitlines()[0]})")
    if "smiles" not in table.column_names:
        usage_error(flag, f"{path}: no 'smiles' column (columns: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        usage_error(flag, f"{path}: no molecules (0 rows)")
    return table


def _load_run(run: Path, checkpoint: str):
    from molphenix.train import load_run

    if not run.is_dir():
        usage_error("--run", f"{run}: run directory not found")
    try:
        return load_run(run, checkpoint)
    except FileNotFoundError as exc:
        usage_error("--run", str(exc))
    except ValueError as exc:
        usage_error("--checkpoint", str(exc))


def build_library(tm, table: Any, concentrations: Optional[List[float]], *, flag: str = "--molecules",
                  say=typer.echo) -> Tuple[Any, Dict[str, np.ndarray]]:
    """Embed the molecules of ``table`` at their concentrations into an Index.

    Returns:
        ``(Index, {"molecule_id", "smiles", "concentration_um"})`` aligned with the index rows.
    """
    from molphenix.data.schema import find_invalid_smiles
    from molphenix.retrieval import Index

    smiles = [None if s is None else str(s) for s in table.column("smiles").to_pylist()]
    ids = ([None if m is None else str(m) for m in table.column("molecule_id").to_pylist()]
           if "molecule_id" in table.column_names else list(smiles))
    has_conc = "concentration_um" in table.column_names
    if has_conc and concentrations is not None:
        usage_error("--concentrations", f"the {flag} file has a concentration_um column; give one or the other")
    if has_conc:
        conc = table.column("concentration_um").cast("float64").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~(np.isfinite(conc) & (conc > 0)))
        if bad.size:
            usage_error(flag, f"row {int(bad[0])}: concentration_um must be a finite number > 0 µM, "
                              f"got {conc[bad[0]]}")
    else:
        doses = concentrations if concentrations is not None else list(tm.doses)
        if not doses:
            usage_error("--concentrations", "the run has no dose set; pass --concentrations")
        n = len(smiles)
        smiles = [s for s in smiles for _ in doses]
        ids = [m for m in ids for _ in doses]
        conc = np.tile(np.asarray(doses, dtype=np.float64), n)
    missing = [i for i, m in enumerate(ids) if m is None]
    if missing:
        usage_error(flag, f"row {missing[0]}: molecule_id is empty")
    invalid = np.asarray(find_invalid_smiles(smiles), dtype=bool)
    if invalid.any():
        first = int(np.flatnonzero(invalid)[0])
        say(f"skipped {int(invalid.sum())} rows with invalid SMILES (first: {ids[first]!r}, "
            f"{smiles[first]!r})", err=True)
        keep = np.flatnonzero(~invalid)
        if keep.size == 0:
            usage_error(flag, "no valid SMILES")
        smiles = [smiles[i] for i in keep]
        ids = [ids[i] for i in keep]
        conc = conc[keep]
    keys = [f"{m}@{c:g}" for m, c in zip(ids, conc)]
    seen: Dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            usage_error(flag, f"(molecule_id, concentration) {k!r} appears twice (rows {seen[k]} and {i})")
        seen[k] = i
    emb = tm.embed_molecules(smiles, conc).cpu()
    index = Index(emb, keys)
    return index, {"molecule_id": np.asarray(ids, dtype=object), "smiles": np.asarray(smiles, dtype=object),
                   "concentration_um": np.asarray(conc, dtype=np.float64)}


def _check_out(out: Path, suffixes: Tuple[str, ...], overwrite: bool) -> None:
    if out.suffix.lower() not in suffixes:
        usage_error("--out", f"{out}: expected a file ending in {' or '.join(suffixes)}")
    if out.is_dir():
        usage_error("--out", f"{out} is a directory; give a file path")
    if out.exists() and not overwrite:
        usage_error("--out", f"{out} exists; pass --overwrite")


def _read_wells(path: Path) -> Any:
    from molphenix.data import SchemaError, load_dataset
    from molphenix.data.io import read_wells
    from molphenix.data.schema import validate_wells

    if path.is_dir():
        if not (path / "wells.parquet").is_file():
            usage_error("--wells", f"{path}: a dataset directory needs wells.parquet")
        return load_dataset(path, check_smiles=False).wells
    if not path.is_file():
        usage_error("--wells", f"{path}: file not found")
    try:
        return validate_wells(read_wells(path))
    except SchemaError as exc:
        usage_error("--wells", str(exc))


def _library_columns(path: Path, ids: np.ndarray) -> Dict[str, np.ndarray]:
    """molecule_id / concentration_um of a library's ids (from its extra columns, else parsed)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    n = len(ids)
    if "molecule_id" in names and "concentration_um" in names:
        t = pq.read_table(path, columns=["id", "molecule_id", "concentration_um"])
        lookup = dict(zip(t.column("id").to_pylist(),
                          zip(t.column("molecule_id").to_pylist(), t.column("concentration_um").to_pylist())))
        mol = np.asarray([lookup[i][0] for i in ids.tolist()], dtype=object)
        conc = np.asarray([lookup[i][1] for i in ids.tolist()], dtype=np.float64)
        return {"molecule_id": mol, "concentration_um": conc}
    return {"molecule_id": np.asarray([str(i) for i in ids.tolist()], dtype=object),
            "concentration_um": np.full(n, np.nan)}


def retrieve_command(
    run: Path = typer.Option(..., "--run", help="Trained run directory."),
    wells: Path = typer.Option(..., "--wells", help="Wells Parquet (documented schema, with control wells) or a dataset directory."),
    out: Path = typer.Option(..., "--out", help="Results file: .parquet or .csv."),
    library: Optional[Path] = typer.Option(None, "--library", help="Library Parquet from embed-library."),
    molecules: Optional[Path] = typer.Option(None, "--molecules", help="Or: a molecules file to embed now (as embed-library)."),
    top_fraction: Optional[float] = typer.Option(None, "--top-fraction", help="Results per query as a fraction of the candidates (k = max(1, ceil(F N)))."),
    k: Optional[int] = typer.Option(None, "--k", help="Results per query.", callback=positive_int),
    concentrations: Optional[str] = typer.Option(None, "--concentrations", help="With --molecules: comma-separated µM (as embed-library)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (default) or last."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Retrieve the best (molecule, concentration) candidates for every treated well of --wells."""
    from molphenix.distributed import process_group

    # Under torchrun (WORLD_SIZE > 1) the ranks shard the candidates (each reads only its rows
    # of --library); every rank embeds the wells; rank 0 writes --out and prints.
    with process_group():
        _retrieve(run, wells, out, library, molecules, top_fraction, k, concentrations, checkpoint,
                  overwrite)


def _retrieve(run: Path, wells: Path, out: Path, library: Optional[Path], molecules: Optional[Path],
              top_fraction: Optional[float], k: Optional[int], concentrations: Optional[str],
              checkpoint: str, overwrite: bool) -> None:
    import pyarrow as pa

    from molphenix.distributed import get_world_size, is_main
    from molphenix.distributed.retrieval import ShardedIndex
    from molphenix.retrieval import Index

    sharded = get_world_size() > 1

    if (library is None) == (molecules is None):
        usage_error("--library", "give exactly one of --library or --molecules")
    if (top_fraction is None) == (k is None):
        usage_error("--top-fraction", "give exactly one of --top-fraction or --k")
    if top_fraction is not None and not (0 < top_fraction <= 1):
        usage_error("--top-fraction", f"must lie in (0, 1], got {top_fraction}")
    if library is not None and concentrations is not None:
        usage_error("--concentrations", "only with --molecules (a library is already embedded)")
    _check_out(out, _OUT_SUFFIXES, overwrite)
    conc = _parse_concentrations(concentrations)
    mol_table = read_molecules(molecules) if molecules is not None else None
    if library is not None and not library.is_file():
        usage_error("--library", f"{library}: file not found")
    w = _read_wells(wells)
    tm = _load_run(run, checkpoint)
    if library is not None:
        try:
            index = ShardedIndex.load(library) if sharded else Index.load(library)
        except ValueError as exc:
            usage_error("--library", str(exc))
        if index.dim != tm.embed_dim:
            usage_error("--library", f"{library}: embeddings have width {index.dim}, the run's {tm.embed_dim}; "
                                     "was it embedded with another run?")
        info = None
    else:
        try:
            index, info = build_library(tm, mol_table, conc)
        except ValueError as exc:
            usage_error("--molecules", str(exc))
    if k is not None and k > len(index):
        usage_error("--k", f"must be <= the number of candidates ({len(index)}), got {k}")
    is_control = w.column("is_control").to_numpy(zero_copy_only=False).astype(bool)
    treated = np.flatnonzero(~is_control)
    if treated.size == 0:
        usage_error("--wells", f"{wells}: no treated (non-control) wells to query")
    from molphenix.data.io import Dataset

    try:
        qemb = tm.embed_wells(Dataset(wells=w, molecules=pa.table({"molecule_id": pa.array([], pa.string()),
                                                                   "smiles": pa.array([], pa.string())})))
    except ValueError as exc:
        usage_error("--wells", str(exc))
    searcher = ShardedIndex.from_index(index) if sharded and info is not None else index
    scores, rid = searcher.search(qemb[treated], k, fraction=top_fraction)
    if not is_main():
        return
    scores = np.asarray(scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores)
    nq, kk = scores.shape
    flat_ids = np.asarray(rid).reshape(-1)
    if info is not None:
        pos = index.positions(flat_ids)
        mol, cc = info["molecule_id"][pos], info["concentration_um"][pos]
    else:
        lc = _library_columns(library, flat_ids)
        mol, cc = lc["molecule_id"], lc["concentration_um"]
    well_ids = np.asarray(w.column("well_id").to_pylist(), dtype=object)[treated]
    table = pa.table({
        "query": pa.array(np.repeat(well_ids, kk).tolist(), pa.string()),
        "rank": pa.array(np.tile(np.arange(kk, dtype=np.int64), nq)),
        "molecule_id": pa.array(mol.tolist(), pa.string()),
        "concentration_um": pa.array(cc, pa.float64()),
        "score": pa.array(scores.reshape(-1).astype(np.float32)),
        "id": pa.array([str(i) for i in flat_ids.tolist()], pa.string()),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, out)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    typer.echo(f"wrote {out}: {nq} queries x {kk} results from {len(index)} candidates")


def register(app: typer.Typer) -> None:
    """Add ``embed-library`` and ``retrieve`` to ``app``."""
    from molphenix.cli.library import embed_library_command

    app.command("embed-library", help="Embed (molecule, concentration) pairs with a trained run into a library (streamed, resumable).")(
        embed_library_command)
    app.command("retrieve", help="Retrieve the best candidates for every treated well with a trained run.")(
        retrieve_command)
