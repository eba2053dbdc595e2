"""``molphenix retrieve``: the best library candidates for every treated well, with a trained run.

(``embed-library``, which builds the library, lives in :mod:`molphenix.cli.library`.)

``retrieve --run RUN --wells FILE (--library LIB | --molecules FILE) (--top-fraction F | --k K)
--out FILE`` embeds the treated wells of FILE (a wells Parquet in the documented schema, or a
dataset directory; each batch's control wells centre it, as in training) and writes, for every
treated well, its best candidates: columns ``query`` (the well_id), ``rank`` (0 = best),
``molecule_id``, ``concentration_um``, ``score`` (cosine), ``id``; Parquet or CSV by the
extension of ``--out``. The output is streamed: queries are searched and written in steps of
about a million output rows, so 10,000 wells against a million candidates at ``--top-fraction
0.01`` (10^8 rows) never hold the whole table; above :data:`WARN_ROWS` rows a warning says so
before the work starts. LIB is a library directory or a Parquet index file; a directory opens
without reading its rows.

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


#: Output rows above which ``retrieve`` warns before writing (Q wells x k results).
WARN_ROWS = 10_000_000
#: Output rows searched and written per step (the output is streamed in steps of this size).
ROWS_PER_STEP = 1_000_000


def _result_columns(index: Any, info: Optional[Dict[str, np.ndarray]]):
    """(id, molecule_id, concentration_um) of every candidate row, as pyarrow Arrays (read once
    from the library's columns; ``molecule_id`` falls back to the id, the concentration to NaN,
    for a library saved without them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = index.column("id")
    if ids.type != pa.string():
        ids = pc.cast(ids, pa.string())
    if info is not None:
        return (ids, pa.array(info["molecule_id"].tolist(), pa.string()),
                pa.array(info["concentration_um"], pa.float64()))
    try:
        mol = index.column("molecule_id")
        conc = index.column("concentration_um")
    except KeyError:
        return ids, ids, pa.array(np.full(len(ids), np.nan))
    return ids, (mol if mol.type == pa.string() else pc.cast(mol, pa.string())), pc.cast(conc, pa.float64())


def retrieve_command(
    run: Path = typer.Option(..., "--run", help="Trained run directory."),
    wells: Path = typer.Option(..., "--wells", help="Wells Parquet (documented schema, with control wells) or a dataset directory."),
    out: Path = typer.Option(..., "--out", help="Results file: .parquet or .csv."),
    library: Optional[Path] = typer.Option(None, "--library", help="Library from embed-library (a directory, or a .parquet file)."),
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

    from molphenix.distributed import get_world_size
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
    if library is not None and not library.exists():
        usage_error("--library", f"{library}: no such library directory or file")
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
    _write_results(searcher, index, info, qemb[treated],
                   np.asarray(w.column("well_id").to_pylist(), dtype=object)[treated], k,
                   top_fraction, out)


def _write_results(searcher: Any, index: Any, info: Optional[Dict[str, np.ndarray]], queries: Any,
                   well_ids: np.ndarray, k: Optional[int], top_fraction: Optional[float],
                   out: Path) -> None:
    """Search in steps of about :data:`ROWS_PER_STEP` output rows and append each step's rows to
    ``out`` (written to a temporary file, renamed when complete); rank 0 writes."""
    import os
    import tempfile
    import time

    import pyarrow as pa

    from molphenix.distributed import is_main
    from molphenix.ops import k_for_fraction

    t0 = time.perf_counter()
    nq, n = int(queries.shape[0]), len(searcher)
    kk = int(k) if k is not None else k_for_fraction(top_fraction, n)
    total = nq * kk
    main_rank = is_main()
    if main_rank and total > WARN_ROWS:
        typer.echo(f"warning: --out will hold {total:,} rows ({nq:,} wells x {kk:,} results); "
                   f"that is above {WARN_ROWS:,}: consider a smaller --k or --top-fraction",
                   err=True)
    schema = pa.schema([("query", pa.string()), ("rank", pa.int64()), ("molecule_id", pa.string()),
                        ("concentration_um", pa.float64()), ("score", pa.float32()),
                        ("id", pa.string())])
    cols = _result_columns(index, info) if main_rank else None
    writer = tmp = None
    if main_rank:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        if out.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            writer = pcsv.CSVWriter(tmp, schema)
        else:
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(tmp, schema)
    step = max(1, ROWS_PER_STEP // kk)
    try:
        for s in range(0, nq, step):
            scores, rows = searcher.search_rows(queries[s:s + step], k, fraction=top_fraction)
            if not main_rank:
                continue
            scores = np.asarray(scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores)
            m = scores.shape[0]
            flat = pa.array(np.asarray(rows, dtype=np.int64).reshape(-1))
            ids, mol, conc = (c.take(flat) for c in cols)
            table = pa.table({
                "query": pa.array(np.repeat(well_ids[s:s + m], kk).tolist(), pa.string()),
                "rank": pa.array(np.tile(np.arange(kk, dtype=np.int64), m)),
                "molecule_id": mol, "concentration_um": conc,
                "score": pa.array(scores.reshape(-1).astype(np.float32)), "id": ids,
            }, schema=schema)
            writer.write_table(table)
        if main_rank:
            writer.close()
            writer = None
            os.replace(tmp, out)
            tmp = None
    finally:
        if writer is not None:
            writer.close()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    if main_rank:
        typer.echo(f"wrote {out}: {nq} queries x {kk} results from {n} candidates "
                   f"({total:,} rows, {time.perf_counter() - t0:.1f} s)")


def register(app: typer.Typer) -> None:
    """Add ``embed-library`` and ``retrieve`` to ``app``."""
    from molphenix.cli.library import embed_library_command

    app.command("embed-library", help="Embed (molecule, concentration) pairs with a trained run into a library (streamed, resumable).")(
        embed_library_command)
    app.command("retrieve", help="Retrieve the best candidates for every treated well with a trained run.")(
        retrieve_command)
