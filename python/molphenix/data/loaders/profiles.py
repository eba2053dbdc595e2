"""Import any well-level profile table (CellProfiler / pycytominer / embedding tables).

:func:`load_profiles` turns one or more CSV, CSV.gz or Parquet files with one row per well into a
:class:`~molphenix.data.Dataset`; :func:`import_profiles` also writes it (atomically) as a
dataset directory. ``molphenix import-profiles`` is the command line for the same function, and
the JUMP and RxRx3-core loaders are presets of the same machinery (:func:`build_from_table`).

What it does, in order (docs/data_formats.md, "Importing a profile table", is the reference):

1. **Read and join.** Files are stacked by column name; a column's types are promoted across
   files (integers and floats to float, anything mixed with text to text; a column that is all
   null, or absent, in one file takes the others' type and is null there).
2. **Filter.** ``where`` keeps the rows whose columns match (text comparison, as for controls).
3. **Controls.** A well is a control when ``control_column`` matches one of ``control_values``,
   compared as text after stripping spaces; the values ``true``/``false``/``1``/``0`` match in any
   case and match boolean cells. Controls get no molecule and no dose, whatever SMILES the
   table gives them.
4. **Treated wells** need a SMILES that RDKit parses and a finite, positive dose; the others are
   skipped and counted. Molecules are grouped by structure: the molecule id is the RDKit
   InChIKey, or ``molecule_column`` when given, in which case one id with two structures is an
   error and two ids with one structure are merged into the first id (sorted), with a warning.
5. **Features.** Numeric columns chosen by :data:`DEFAULT_FEATURE_RULE` or ``features``; every
   numeric column left out is recorded. Feature columns with NaN/Inf values (over the imported
   wells) are dropped and counted, or the import fails (``nonfinite``).
6. **Normalization** per plate against the plate's control wells (:mod:`molphenix.data.normalize`).

Rows are counted from 0 within each file, header excluded, in every message.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..._version import __version__
from ..._warnings import external_stacklevel
from ..io import Dataset, _reading, from_tables, save_dataset
from ..normalize import NORMALIZATIONS, normalize_by_plate
from ..schema import InvalidSmilesReport, SchemaError
from ._common import embedding_array, read_table, strip_cxsmiles

__all__ = [
    "DEFAULT_FEATURE_RULE",
    "DOSE_UNITS",
    "ProfileImportError",
    "build_from_table",
    "import_profiles",
    "load_profiles",
    "profiles_command",
    "summary_lines",
]

#: The default feature rule: CellProfiler compartment features, or embedding-style names made of
#: a word, an underscore and digits only (``emb_12``, ``X_3``, ``feature_0``), or digits alone.
#: ``Metadata_*`` columns never match.
DEFAULT_FEATURE_RULE = r"^(?:(?:Cells|Cytoplasm|Nuclei)_.+|(?!Metadata_)[A-Za-z][A-Za-z0-9]*_\d+|\d+)$"
#: Dose units and their factor to µM.
DOSE_UNITS = {"uM": 1.0, "µM": 1.0, "μM": 1.0, "nM": 1e-3, "mM": 1e3, "M": 1e6}
_NONFINITE = ("drop", "fail")
_TRUE, _FALSE = "\x00true", "\x00false"


_OPTION_REF = re.compile(r"<<(\w+)(?:=(\w+))?>>")


def _render(template: str, names: Mapping[str, str] | None) -> str:
    """Fill ``<<option>>`` / ``<<option=value>>`` references: as Python parameters
    (``where``, ``nonfinite='drop'``) or, given ``names`` (option -> flag), as flags
    (``--where``, ``--nonfinite drop``)."""
    def sub(m: re.Match) -> str:
        opt, val = m.group(1), m.group(2)
        if names is None:
            return f"{opt}={val!r}" if val else opt
        flag = names.get(opt, opt)
        return f"{flag} {val}" if val else flag

    return _OPTION_REF.sub(sub, template)


class ProfileImportError(SchemaError):
    """An import that cannot go on: bad options, missing columns or bad data.

    Attributes:
        option: The :func:`load_profiles` parameter at fault (``"smiles_column"``, ...), or None.
        usage: True when the options are wrong (the CLI exits 2), False for bad data (exit 1).
        missing: For missing columns: ``[(column, option), ...]``, every one of them.
        template: The message with its references to options left open (see :meth:`message`).
    """

    def __init__(self, message: str, *, option: str | None = None, usage: bool = False,
                 table: str = "profiles", column: str | None = None, row: int | None = None,
                 missing: Sequence[tuple[str, str]] = ()):
        super().__init__(table, column, row, _render(message, None))
        self.option = option
        self.usage = usage
        self.missing = list(missing)
        self.template = message

    @property
    def located(self) -> bool:
        """Whether the message points at a file, column or row (not just at an option)."""
        return self.table != "profiles" or self.column is not None or self.row is not None

    def message(self, names: Mapping[str, str] | None = None, *, location: bool = True) -> str:
        """The message, with options named as in ``names`` (e.g. the CLI's flags).

        Args:
            names: option -> how to call it (default: the Python parameter names).
            location: Prefix the table (file), column and row as ``str(error)`` does.

        Returns:
            One line.
        """
        text = _render(self.template, names)
        if not location:
            return text
        where = f"{self.table}"
        if self.column is not None:
            where += f", column {self.column!r}"
        if self.row is not None:
            where += f", row {self.row}"
        return f"{where}: {text}"


# ----------------------------------------------------------------------------- small helpers


def _text_values(col: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """A column as stripped text: integral floats without ``.0``, NaN/empty as None."""
    out: list[str | None] = []
    for v in col.to_pylist():
        if v is None:
            out.append(None)
            continue
        if isinstance(v, float):
            if v != v:
                out.append(None)
                continue
            s = str(int(v)) if v.is_integer() else repr(v)
        else:
            s = str(v).strip()
        out.append(s if s != "" else None)
    return out


def _match_key(v: str | None) -> str | None:
    if v is None:
        return None
    t = v.strip()
    low = t.lower()
    if low in ("true", "1"):
        return _TRUE
    if low in ("false", "0"):
        return _FALSE
    return t


def match_values(cells: Sequence[str | None], values: Iterable[str]) -> np.ndarray:
    """Which cells equal one of ``values``, compared as text (booleans: true/false/1/0, any case).

    Args:
        cells: Cell texts (from :func:`_text_values`).
        values: Accepted values.

    Returns:
        bool [len(cells)].
    """
    keys = {_match_key(str(v)) for v in values}
    return np.array([_match_key(c) in keys if c is not None else False for c in cells], dtype=bool)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _unify(tables: list[pa.Table], names: list[str]) -> pa.Table:
    """Stack tables by column name with promoted types (see the module docstring)."""
    types: dict[str, list[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            types.setdefault(f.name, []).append(f.type)
    target: dict[str, pa.DataType] = {}
    for col, ts in types.items():
        real = [t for t in ts if not pa.types.is_null(t)]
        if not real or all(t == real[0] for t in real):
            continue
        if all(pa.types.is_integer(t) for t in real):
            target[col] = pa.int64()
        elif all(_is_numeric(t) or pa.types.is_boolean(t) for t in real):
            target[col] = pa.float64()
        elif all(_is_numeric(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
                 or pa.types.is_large_string(t) or pa.types.is_dictionary(t) for t in real):
            target[col] = pa.string()
        else:
            shown = ", ".join(f"{n}: {t.schema.field(col).type}" for n, t in zip(names, tables)
                              if col in t.column_names)
            raise ProfileImportError(f"column {col!r} has types that cannot be joined ({shown})")
    out = []
    for t in tables:
        for col, ty in target.items():
            if col not in t.column_names:
                continue
            c = t.column(col)
            if pa.types.is_string(ty) and not (pa.types.is_string(c.type) or pa.types.is_null(c.type)):
                c = pa.chunked_array([pa.array(_text_values(c), pa.string())])
            else:
                c = c.cast(ty)
            t = t.set_column(t.column_names.index(col), col, c)
        out.append(t)
    return pa.concat_tables(out, promote_options="permissive") if len(out) > 1 else out[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _structure_keys(smiles: Iterable[str]) -> dict[str, str | None]:
    """SMILES -> InChIKey (``smiles:<canonical>`` when RDKit makes no InChIKey), None if invalid."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        out: dict[str, str | None] = {}
        for s in smiles:
            if s in out:
                continue
            mol = Chem.MolFromSmiles(s) if s else None
            if mol is None:
                out[s] = None
                continue
            key = Chem.MolToInchiKey(mol)
            out[s] = key if key else "smiles:" + Chem.MolToSmiles(mol)
        return out
    finally:
        RDLogger.EnableLog("rdApp.*")


def _warn(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=external_stacklevel())


def _short_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- the core


@dataclass
class _Origin:
    """Where each row of the joined table came from."""

    names: list[str]
    file_index: np.ndarray  # int [N]
    row: np.ndarray  # int [N], row within its file

    def where(self, i: int) -> tuple[str, int]:
        return self.names[int(self.file_index[i])], int(self.row[i])


@dataclass
class BuildResult:
    """What :func:`build_from_table` made.

    Attributes:
        dataset: The validated dataset.
        report: Counts of everything skipped or dropped (``meta["loader_report"]``).
        feature_columns: The feature columns used (after dropping).
        left_out: Numeric columns neither used as features nor given a role, in table order.
        dropped: Feature columns dropped, with their number of non-finite values (or a reason).
        merged: Molecule ids merged because they share one structure: kept id -> all ids.
        normalization: What the normalization did.
    """

    dataset: Dataset
    report: dict[str, int]
    feature_columns: list[str]
    left_out: list[str]
    dropped: dict[str, Any] = field(default_factory=dict)
    merged: dict[str, list[str]] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)


def build_from_table(
    table: pa.Table,
    *,
    origin: _Origin | None = None,
    smiles_column: str,
    control_column: str,
    control_values: Sequence[str],
    dose_column: str | None = None,
    dose_unit: str = "uM",
    dose: float = 1.0,
    molecule_column: str | None = None,
    plate_column: str | None = None,
    well_column: str | None = None,
    well_id_columns: Sequence[str] | None = None,
    batch_column: str | None = None,
    batch_per_dataset: bool = True,
    dataset_column: str | None = None,
    dataset: str | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    features: str | Sequence[str] | None = None,
    normalize: str = "none",
    nonfinite: str = "drop",
    extra_columns: Mapping[str, str] | None = None,
    available: tuple[np.ndarray, str] | None = None,
    check_smiles: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> BuildResult:
    """The one code path behind :func:`load_profiles` and the JUMP / RxRx3-core presets.

    Takes an already joined table (see :func:`load_profiles` for the arguments); presets derive
    their columns first. Extra arguments: ``origin`` (file and row of each row, for messages);
    ``dose`` (the nominal dose, in ``dose_unit``, when there is no dose column);
    ``well_id_columns`` (columns joined with ``/`` into the well id; default plate and well);
    ``batch_per_dataset`` (prefix batch names with the dataset when a dataset column is used,
    so that batches of different conditions are never centred together); ``extra_columns``
    (``{wells column: table column}`` copied as text); ``available`` (``(bool [N], name)``: wells
    that would be imported but are False there are skipped and counted as ``report[name]``, e.g.
    wells without an embedding); ``nonfinite="keep"`` (leave non-finite
    features for validation to reject, naming the row); ``meta`` (merged into the dataset's meta).

    Returns:
        :class:`BuildResult`. Skips are counted in ``report`` but not warned about (the callers
        do); invalid SMILES and merged ids are warned about here.

    Raises:
        ProfileImportError: missing columns (all named), bad options, duplicate well ids, one
            molecule id with two structures, plates without controls, non-finite features
            under ``nonfinite="fail"``, no features or no wells left.
    """
    n = table.num_rows
    if origin is None:
        origin = _Origin(["table"], np.zeros(n, np.int64), np.arange(n))
    if normalize not in NORMALIZATIONS:
        raise ProfileImportError(f"must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}",
                                 option="normalize", usage=True)
    if nonfinite not in _NONFINITE + ("keep",):
        raise ProfileImportError(f"must be one of {', '.join(_NONFINITE)}, got {nonfinite!r}",
                                 option="nonfinite", usage=True)
    if dose_unit not in DOSE_UNITS:
        raise ProfileImportError(f"must be one of uM, nM, mM, M, got {dose_unit!r}", option="dose_unit", usage=True)
    if not control_values:
        raise ProfileImportError("give at least one control value", option="control_values", usage=True)
    where = {k: [str(v) for v in (vs if isinstance(vs, (list, tuple, set)) else [vs])] for k, vs in (where or {}).items()}

    # ---- every missing column, in one message
    roles: list[tuple[str | None, str]] = [
        (smiles_column, "smiles_column"), (control_column, "control_column"), (dose_column, "dose_column"),
        (molecule_column, "molecule_column"), (plate_column, "plate_column"), (well_column, "well_column"),
        (batch_column, "batch_column"), (dataset_column, "dataset_column"),
    ]
    roles += [(c, "where") for c in where]
    roles += [(c, "well_id_columns") for c in (well_id_columns or ())]
    roles += [(c, "extra_columns") for c in (extra_columns or {}).values()]
    explicit_features = features is not None and not isinstance(features, str)
    if explicit_features:
        roles += [(c, "features") for c in features]  # type: ignore[union-attr]
    missing = [(c, r) for c, r in roles if c is not None and c not in table.column_names]
    if missing:
        seen: set = set()
        missing = [m for m in missing if not (m[0] in seen or seen.add(m[0]))]
        listed = ", ".join(f"{c!r} ({r})" for c, r in missing)
        have = ", ".join(repr(c) for c in table.column_names[:8])
        more = f" ... ({table.num_columns} columns)" if table.num_columns > 8 else ""
        raise ProfileImportError(f"missing column{'s' if len(missing) > 1 else ''} {listed}; the table has {have}{more}",
                                 usage=True, missing=missing, option=missing[0][1])
    role_columns = {c: r for c, r in roles if c is not None and r not in ("features",)}

    report: dict[str, int] = {"rows": n}

    def texts(col: str | None) -> list[str | None] | None:
        return None if col is None else _text_values(table.column(col))

    # ---- where
    keep_rows = np.ones(n, dtype=bool)
    for col, values in where.items():
        keep_rows &= match_values(texts(col), values)
    report["not_matching_where"] = int((~keep_rows).sum())

    is_control = match_values(texts(control_column), control_values)
    smiles = [strip_cxsmiles(s) if s else None for s in texts(smiles_column)]
    mol_col = texts(molecule_column)

    # ---- dose
    factor = DOSE_UNITS[dose_unit]
    if dose_column is not None:
        col = table.column(dose_column)
        if _is_numeric(col.type) or pa.types.is_null(col.type):
            raw = col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        else:
            raw = np.array([_to_float(v) for v in _text_values(col)], dtype=np.float64)
        conc = raw * factor
    else:
        if not (np.isfinite(dose) and dose > 0):
            raise ProfileImportError(f"must be finite and > 0, got {dose}", option="dose", usage=True)
        conc = np.full(n, float(dose) * factor)

    # ---- treated wells: SMILES, dose, structure
    treated = keep_rows & ~is_control
    has_smiles = np.array([s is not None for s in smiles], dtype=bool)
    no_smiles = treated & ~has_smiles
    with np.errstate(invalid="ignore"):
        good_dose = np.isfinite(conc) & (conc > 0)
    no_dose = treated & has_smiles & ~good_dose
    report["treated_without_smiles"] = int(no_smiles.sum())
    report["treated_without_dose"] = int(no_dose.sum())
    if mol_col is not None:
        no_id = treated & has_smiles & good_dose & np.array([m is None for m in mol_col], dtype=bool)
        report["treated_without_molecule_id"] = int(no_id.sum())
    else:
        no_id = np.zeros(n, dtype=bool)
    candidates = treated & has_smiles & good_dose & ~no_id
    cand_idx = np.flatnonzero(candidates)
    keys = _structure_keys(smiles[i] for i in cand_idx) if check_smiles else {}
    invalid = np.zeros(n, dtype=bool)
    struct: list[str | None] = [None] * n
    for i in cand_idx:
        s = smiles[i]
        k = keys.get(s, s) if check_smiles else s
        if k is None:
            invalid[i] = True
        struct[i] = k
    report["treated_invalid_smiles"] = int(invalid.sum())
    bad_report = InvalidSmilesReport()
    if invalid.any():
        seen_bad: dict[str, int] = {}
        for i in np.flatnonzero(invalid):
            mid = mol_col[i] if mol_col is not None else smiles[i]
            if mid not in seen_bad:
                seen_bad[mid] = int(i)
                bad_report.molecule_ids.append(mid)
                bad_report.smiles.append(smiles[i])
                bad_report.rows.append(origin.where(i)[1])
        bad_report.dropped_wells = int(invalid.sum())
        _warn(f"molphenix.data: {bad_report}")
    treated_ok = candidates & ~invalid

    # ---- molecule ids (grouped by structure)
    mol_id: list[str | None] = [None] * n
    merged: dict[str, list[str]] = {}
    mol_smiles: dict[str, str] = {}
    if mol_col is None:
        for i in np.flatnonzero(treated_ok):
            mol_id[i] = struct[i]
            mol_smiles.setdefault(struct[i], smiles[i])
    else:
        id_struct: dict[str, tuple[str, int]] = {}
        struct_ids: dict[str, list[str]] = {}
        for i in np.flatnonzero(treated_ok):
            m, k = mol_col[i], struct[i]
            first = id_struct.setdefault(m, (k, int(i)))
            if first[0] != k:
                f0, r0 = origin.where(first[1])
                f1, r1 = origin.where(i)
                raise ProfileImportError(
                    f"molecule id {m!r} has two structures: {smiles[first[1]]!r} ({f0} row {r0}) and "
                    f"{smiles[i]!r}; hint: fix the table, or leave out <<molecule_column>> to group wells "
                    f"by structure (InChIKey)", table=f1, column=molecule_column, row=r1)
            ids = struct_ids.setdefault(k, [])
            if m not in ids:
                ids.append(m)
        canon = {}
        for k, ids in struct_ids.items():
            keep_id = sorted(ids)[0]
            for m in ids:
                canon[m] = keep_id
            if len(ids) > 1:
                merged[keep_id] = sorted(ids)
        for i in np.flatnonzero(treated_ok):
            mid = canon[mol_col[i]]
            mol_id[i] = mid
            mol_smiles.setdefault(mid, smiles[i])
        if merged:
            listed = "; ".join(f"{', '.join(v)} -> {k}" for k, v in sorted(merged.items()))
            _warn(f"molphenix.data: {len(merged)} structure(s) had several molecule ids; merged into one "
                  f"molecule each: {listed}")

    usable = keep_rows & (is_control | treated_ok)
    if available is not None:
        ok = np.asarray(available[0], dtype=bool)
        report[available[1]] = int((usable & ~ok).sum())
        usable &= ok
    rows = np.flatnonzero(usable)
    report["control_wells"] = int(is_control[rows].sum())
    report["treated_wells"] = int(len(rows) - report["control_wells"])
    if report["treated_wells"] == 0:
        what = "wells" if len(rows) == 0 else "treated wells"
        raise ProfileImportError(f"no {what} left to import (" + ", ".join(f"{k}={v}" for k, v in report.items()) + ")")

    # ---- plate / well / ids
    def required_texts(col: str, option: str) -> list[str | None]:
        vals = texts(col)
        for i in rows:
            if vals[i] is None:
                f, r = origin.where(i)
                raise ProfileImportError(f"empty value in the {option} column", table=f, column=col, row=r)
        return vals

    if plate_column is not None:
        plate = required_texts(plate_column, "plate_column")
    else:
        plate = [Path(origin.names[int(k)]).name.split(".")[0] for k in origin.file_index]
    def joined(parts: list[list[str | None]]) -> list[str | None]:
        return [None if any(p[i] is None for p in parts) else "/".join(p[i] for p in parts)  # type: ignore[misc]
                for i in range(n)]

    if well_id_columns:
        well_id = joined([required_texts(c, "well_id_columns") for c in well_id_columns])
        id_cols = list(well_id_columns)
    elif well_column is not None:
        well_id = joined([plate, required_texts(well_column, "well_column")])
        id_cols = [plate_column or "<file name>", well_column]
    else:
        well_id = [f"{origin.names[int(origin.file_index[i])]}/{int(origin.row[i])}" for i in range(n)]
        id_cols = ["<file name>", "<row>"]
    # duplicates among every row that passed the filter (a table problem even if skipped)
    first_seen: dict[str, int] = {}
    for i in np.flatnonzero(keep_rows):
        w = well_id[i]
        if w is None:
            continue
        j = first_seen.setdefault(w, int(i))
        if j != i:
            f0, r0 = origin.where(j)
            f1, r1 = origin.where(i)
            hint = ("hint: if the table holds several conditions (time points, cell lines, ...), give "
                    "<<dataset_column>> so each is its own dataset, or keep one with <<where>>; if it holds one "
                    "row per site or per cell, aggregate it to one row per well first")
            if well_column is None and not well_id_columns:
                hint = "hint: give <<well_column>> (and <<plate_column>>) so that wells are identified"
            raise ProfileImportError(f"duplicate well id {w!r} (from {' + '.join(id_cols)}), first at {f0} row {r0}; {hint}",
                                     table=f1, column=(well_id_columns or [well_column])[-1], row=r1)

    if dataset_column is not None:
        ds_vals = required_texts(dataset_column, "dataset_column")
        ds_name = [f"{dataset}/{v}" if dataset else v for v in ds_vals]  # type: ignore[misc]
    else:
        ds_name = [dataset or "profiles"] * n
    if batch_column is not None:
        b = required_texts(batch_column, "batch_column")
        batch = [f"{d}/{v}" for d, v in zip(ds_name, b)] if dataset_column and batch_per_dataset else b
    else:
        batch = plate

    # ---- features
    numeric = [c for c in table.column_names if _is_numeric(table.schema.field(c).type)]
    if explicit_features:
        chosen = list(features)  # type: ignore[arg-type]
        rule = "explicit list"
        for c in chosen:
            t = table.schema.field(c).type
            if not (_is_numeric(t) or pa.types.is_null(t)):
                raise ProfileImportError(f"feature column {c!r} is not numeric ({t})", option="features", usage=True)
    else:
        pattern = DEFAULT_FEATURE_RULE if features is None else features
        rule = "default" if features is None else f"regex {features}"
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ProfileImportError(f"not a valid regular expression ({exc})", option="features", usage=True) from None
        matched = [c for c in table.column_names if rx.search(c) and c not in role_columns]
        not_num = [c for c in matched if not (_is_numeric(table.schema.field(c).type)
                                               or pa.types.is_null(table.schema.field(c).type))]
        if not_num:
            raise ProfileImportError(
                f"{len(not_num)} column(s) chosen as features are not numeric: "
                + ", ".join(f"{c!r} ({table.schema.field(c).type})" for c in not_num[:5])
                + ("" if features is not None else "; choose the features with <<features>> (a regular expression)"),
                option="features", usage=True)
        chosen = matched
    if not chosen:
        raise ProfileImportError(
            ("no column matches the default feature rule (names starting Cells_, Cytoplasm_ or Nuclei_, "
             "or embedding names such as emb_12); choose the features with <<features>> (a regular expression)")
            if features is None else f"no column matches {features!r}", option="features", usage=True)
    chosen_set = set(chosen)
    left_out = [c for c in numeric if c not in chosen_set and c not in role_columns]

    need64 = normalize != "none"
    mat = np.empty((len(rows), len(chosen)), dtype=np.float64 if need64 else np.float32)
    sel = pa.array(rows)
    for j, c in enumerate(chosen):
        mat[:, j] = table.column(c).take(sel).cast(pa.float64()).to_numpy(zero_copy_only=False)
    dropped: dict[str, Any] = {}
    finite = np.isfinite(mat)
    bad_cols = np.flatnonzero(~finite.all(0))
    if len(bad_cols) and nonfinite == "fail":
        j = int(bad_cols[0])
        r = int(np.flatnonzero(~finite[:, j])[0])
        f, fr = origin.where(rows[r])
        raise ProfileImportError(
            f"non-finite feature value {mat[r, j]} ({len(bad_cols)} feature column(s) have NaN/Inf values); "
            "hint: <<nonfinite=drop>> drops those columns", table=f, column=chosen[j], row=fr)
    if len(bad_cols) and nonfinite == "drop":
        for j in bad_cols:
            dropped[chosen[j]] = f"{int((~finite[:, j]).sum())} non-finite values"
        good = finite.all(0)
        mat = mat[:, good]
        chosen = [c for c, g in zip(chosen, good) if g]
        _require_features(chosen, "every feature column has NaN/Inf values")
    report["nonfinite_feature_columns"] = int(len(bad_cols)) if nonfinite != "keep" else 0

    # ---- normalization, per plate against its controls
    plate_rows = [plate[i] for i in rows]
    ctrl_rows = is_control[rows]
    try:
        norm = normalize_by_plate(mat, plate_rows, ctrl_rows, normalize)
    except ValueError as exc:
        raise ProfileImportError(str(exc), option="normalize") from None
    x = norm.x
    if norm.zero_mad.any():
        zm = [chosen[j] for j in np.flatnonzero(norm.zero_mad)]
        if nonfinite == "fail":
            raise ProfileImportError(
                f"{len(zm)} feature column(s) have a median absolute deviation of 0 over some plate's "
                f"control wells, so robust-z divides by epsilon: {_short_list(zm)}; hint: <<nonfinite=drop>> "
                "drops them", option="normalize")
        if nonfinite == "drop":
            for c in zm:
                dropped[c] = "MAD 0 over some plate's controls"
            x = x[:, ~norm.zero_mad]
            chosen = [c for c, z in zip(chosen, norm.zero_mad) if not z]
            _require_features(chosen, "every feature column has a control MAD of 0 on some plate")
        report["zero_mad_feature_columns"] = len(zm)
    x = np.ascontiguousarray(x, dtype=np.float32)

    # ---- tables
    cols: dict[str, Any] = {
        "well_id": pa.array([well_id[i] for i in rows], pa.string()),
        "dataset": pa.array([ds_name[i] for i in rows], pa.string()),
        "batch": pa.array([batch[i] for i in rows], pa.string()),
        "plate": pa.array(plate_rows, pa.string()),
        "molecule_id": pa.array([None if is_control[i] else mol_id[i] for i in rows], pa.string()),
        "concentration_um": pa.array([None if is_control[i] else float(conc[i]) for i in rows], pa.float64()),
        "is_control": pa.array(ctrl_rows, pa.bool_()),
        "phenomic": embedding_array(x),
    }
    for name, src in (extra_columns or {}).items():
        vals = texts(src)
        cols[name] = pa.array([vals[i] for i in rows], pa.string())
    wells = pa.table(cols)
    ids = sorted(mol_smiles)
    molecules = pa.table({"molecule_id": pa.array(ids, pa.string()),
                          "smiles": pa.array([mol_smiles[k] for k in ids], pa.string())})
    counts = pc.value_counts(wells.column("dataset")).to_pylist()
    primary = max(counts, key=lambda d: (d["counts"], d["values"]))["values"]
    full_meta: dict[str, Any] = {
        "loader_report": report,
        "feature_rule": rule if rule != "default" else f"default: {DEFAULT_FEATURE_RULE}",
        "feature_columns": chosen,
        "left_out_numeric_columns": left_out,
        "dropped_feature_columns": dropped,
        "merged_molecule_ids": merged,
        "normalization": norm.info,
        "primary_dataset": primary,
    }
    if normalize == "tvn":
        full_meta["phenomic_columns"] = f"{x.shape[1]} TVN components of the feature columns"
    full_meta.update(meta or {})
    ds = from_tables(wells, molecules, meta=full_meta, check_smiles=check_smiles)
    if bad_report.count:
        ds.invalid_smiles = bad_report
    return BuildResult(ds, report, chosen, left_out, dropped, merged, norm.info)


def _require_features(chosen: list[str], why: str) -> None:
    if not chosen:
        raise ProfileImportError(why, option="features")


def _to_float(v: str | None) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except ValueError:
        return float("nan")


# ----------------------------------------------------------------------------- public API


def _as_list(files) -> list:
    if isinstance(files, (str, os.PathLike, pa.Table)):
        return [files]
    return list(files)


def read_profile_files(
    files: str | os.PathLike | pa.Table | Sequence[str | os.PathLike | pa.Table],
    *,
    string_columns: Sequence[str] = (),
) -> tuple[pa.Table, _Origin, list[dict[str, Any]]]:
    """Read and join profile files by column name (types promoted).

    Args:
        files: Paths (CSV, CSV.gz, TSV, Parquet) or in-memory tables.
        string_columns: Columns read as text from CSV files (ids such as plate barcodes).

    Returns:
        (joined table, row origins, one ``{"file", "rows", "sha256"}`` record per input).

    Raises:
        FileNotFoundError: a missing file.
        ProfileImportError: no files; columns whose types cannot be joined.
        DataFileError: an unreadable file.
    """
    items = _as_list(files)
    if not items:
        raise ProfileImportError("give at least one file", option="files", usage=True)
    tables, names, sources = [], [], []
    for k, item in enumerate(items):
        if isinstance(item, pa.Table):
            name = f"table{k}"
            t = item
            sources.append({"file": name, "rows": t.num_rows})
        else:
            p = Path(item)
            if p.is_dir():
                raise ProfileImportError(f"{p} is a directory, not a profile file", option="files", usage=True)
            name = p.name
            with _reading("profiles", p, "profile"):
                t = read_table(p, name="profiles", string_columns=string_columns)
            sources.append({"file": name, "rows": t.num_rows, "sha256": _sha256(p)})
        tables.append(t)
        names.append(name)
    if len(set(names)) != len(names):  # same file name in two folders: keep them apart
        names = [f"{k}:{nm}" for k, nm in enumerate(names)]
    table = _unify(tables, names)
    origin = _Origin(names, np.concatenate([np.full(t.num_rows, k, np.int64) for k, t in enumerate(tables)]),
                     np.concatenate([np.arange(t.num_rows) for t in tables]))
    return table, origin, sources


def profiles_command(files: Sequence[Any], out: str | os.PathLike | None = None, **options: Any) -> str:
    """The ``molphenix import-profiles`` command line equivalent to a :func:`load_profiles` call.

    Paths appear as their file names (the inputs are identified by their SHA-256 in the meta).

    Args:
        files: The input files.
        out: The output directory, if any.
        **options: :func:`load_profiles` keyword arguments.

    Returns:
        A shell-quoted command line.
    """
    argv = ["molphenix", "import-profiles"]
    argv += [Path(f).name if not isinstance(f, pa.Table) else "<table>" for f in _as_list(files)]
    if out is not None:
        argv += ["--out", Path(out).name]
    flag = {"smiles_column": "--smiles-column", "control_column": "--control-column",
            "dose_column": "--dose-column", "dose_unit": "--dose-unit", "molecule_column": "--molecule-column",
            "plate_column": "--plate-column", "well_column": "--well-column", "batch_column": "--batch-column",
            "dataset_column": "--dataset-column", "features": "--features", "normalize": "--normalize",
            "nonfinite": "--nonfinite", "dataset": "--dataset"}
    for key, fl in flag.items():
        v = options.get(key)
        if key == "smiles_column":
            argv += [fl, str(v)]
        elif key == "control_column":
            argv += [fl, str(v)]
            for cv in options.get("control_values") or ():
                argv += ["--control-value", str(cv)]
        elif key == "features" and v is not None and not isinstance(v, str):
            argv += [fl, "^(?:" + "|".join(re.escape(c) for c in v) + ")$"]  # an explicit list as a regex
        elif v is not None:
            argv += [fl, str(v)]
    for col, vals in (options.get("where") or {}).items():
        for v in (vals if isinstance(vals, (list, tuple, set)) else [vals]):
            argv += ["--where", f"{col}={v}"]
    return shlex.join(argv)


def load_profiles(
    files: str | os.PathLike | pa.Table | Sequence[str | os.PathLike | pa.Table],
    *,
    smiles_column: str,
    control_column: str,
    control_values: str | Sequence[str],
    dose_column: str | None = None,
    dose_unit: str = "uM",
    molecule_column: str | None = None,
    plate_column: str | None = None,
    well_column: str | None = None,
    batch_column: str | None = None,
    dataset_column: str | None = None,
    where: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] | None = None,
    features: str | Sequence[str] | None = None,
    normalize: str = "none",
    nonfinite: str = "drop",
    dataset: str | None = None,
    check_smiles: bool = True,
) -> Dataset:
    """Import well-level profile tables (CellProfiler, pycytominer, embeddings) as a dataset.

    One row per well. See the module docstring and docs/data_formats.md for the rules; the
    command line ``molphenix import-profiles`` takes the same options as flags.

    Args:
        files: One or more CSV, CSV.gz, TSV or Parquet files (or pyarrow tables), joined by
            column name with promoted types.
        smiles_column: Column with each treated well's SMILES (controls' SMILES are ignored).
        control_column: Column that marks negative-control wells.
        control_values: Value(s) of ``control_column`` that mean "control", compared as text;
            ``true``/``false``/``1``/``0`` match booleans in any case.
        dose_column: Column with the dose; without it every treated well gets 1 ``dose_unit``.
        dose_unit: Unit of the dose: ``uM`` (default), ``nM``, ``mM`` or ``M``; stored as µM.
        molecule_column: Column with molecule ids; default: the RDKit InChIKey of the SMILES.
        plate_column: Column with the plate; default: the input file's name (one plate per file).
        well_column: Column with the well position; the well id is ``plate/well``. Default: the
            file name and row number.
        batch_column: Column with the experimental batch (training centres each batch on its
            controls); default: the plate.
        dataset_column: Column whose every value becomes its own dataset (time point, cell
            line ...), so wells of different conditions are never averaged as replicates; batch
            names are prefixed with it.
        where: Keep only rows where each column matches one of its values (``{"col": "v"}``,
            ``{"col": ["v1", "v2"]}`` or ``[("col", "v"), ...]``); several columns must all match.
        features: A regular expression (``re.search`` on the column name) choosing the numeric
            feature columns, or an explicit list; default :data:`DEFAULT_FEATURE_RULE`.
        normalize: ``none`` (default), ``center``, ``robust-z`` or ``tvn``, per plate against
            its control wells (:mod:`molphenix.data.normalize`).
        nonfinite: ``drop`` (default): feature columns with NaN/Inf values over the imported
            wells (and, for ``robust-z``, features whose control MAD is 0 on some plate) are
            dropped and counted; ``fail``: raise instead.
        dataset: Dataset name (the ``dataset`` value, or the prefix of ``dataset_column``'s
            values); default ``profiles``.
        check_smiles: Parse SMILES with RDKit (needed for structure grouping; leave on).

    Returns:
        The dataset. ``meta`` records the sources (file names, rows, SHA-256), the equivalent
        ``command``, ``feature_columns``, ``left_out_numeric_columns``,
        ``dropped_feature_columns``, ``merged_molecule_ids``, ``normalization`` and
        ``loader_report`` (every skip counted). Skips and merges are also warned about.

    Raises:
        ProfileImportError: (a :class:`~molphenix.data.SchemaError`) missing columns (every one
            named, in one message), bad options, duplicate well ids, one molecule id with two
            structures (row and hint given), plates without the control wells a normalization
            needs (all named), non-finite features under ``nonfinite="fail"``, nothing left.
        FileNotFoundError: a missing input file.
        DataFileError: an unreadable input file.
    """
    if isinstance(control_values, str):
        control_values = [control_values]
    where_map = _where_map(where)
    options = dict(smiles_column=smiles_column, control_column=control_column, control_values=list(control_values),
                   dose_column=dose_column, dose_unit=dose_unit, molecule_column=molecule_column,
                   plate_column=plate_column, well_column=well_column, batch_column=batch_column,
                   dataset_column=dataset_column, where=where_map, features=features, normalize=normalize,
                   nonfinite=nonfinite, dataset=dataset)
    if normalize not in NORMALIZATIONS:
        raise ProfileImportError(f"must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}",
                                 option="normalize", usage=True)
    if nonfinite not in _NONFINITE:
        raise ProfileImportError(f"must be one of {', '.join(_NONFINITE)}, got {nonfinite!r}",
                                 option="nonfinite", usage=True)
    if dose_unit not in DOSE_UNITS:
        raise ProfileImportError(f"must be one of uM, nM, mM, M, got {dose_unit!r}", option="dose_unit", usage=True)
    if features is not None and isinstance(features, str):
        try:
            re.compile(features)
        except re.error as exc:
            raise ProfileImportError(f"not a valid regular expression ({exc})", option="features", usage=True) from None
    text_cols = [c for c in (smiles_column, control_column, molecule_column, plate_column, well_column,
                             batch_column, dataset_column, *where_map) if c]
    table, origin, sources = read_profile_files(files, string_columns=text_cols)
    res = build_from_table(
        table, origin=origin, smiles_column=smiles_column, control_column=control_column,
        control_values=list(control_values), dose_column=dose_column, dose_unit=dose_unit,
        molecule_column=molecule_column, plate_column=plate_column, well_column=well_column,
        batch_column=batch_column, dataset_column=dataset_column, dataset=dataset, where=where_map,
        features=features, normalize=normalize, nonfinite=nonfinite,
        extra_columns={"address": well_column} if well_column else None, check_smiles=check_smiles,
        meta={
            "name": dataset or "profiles",
            "loader": "profiles",
            "sources": sources,
            "options": {k: v for k, v in options.items() if v is not None},
            "command": profiles_command(files, **options),
            "molphenix_version": __version__,
            "column_mapping": _mapping(options),
        },
    )
    skipped = {k: v for k, v in res.report.items()
               if k not in ("rows", "control_wells", "treated_wells", "treated_invalid_smiles") and v}
    if skipped:
        _warn(f"load_profiles: skipped or dropped (of {res.report['rows']} rows): {skipped}")
    return res.dataset


def _where_map(where) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if where is None:
        return out
    items = where.items() if isinstance(where, Mapping) else where
    for col, vals in items:
        for v in (vals if isinstance(vals, (list, tuple, set)) else [vals]):
            out.setdefault(str(col), []).append(str(v))
    return out


def _mapping(o: dict[str, Any]) -> dict[str, str]:
    ds = o["dataset"] or "profiles"
    return {
        "well_id": f"{o['plate_column'] or '<file name>'}/{o['well_column']}" if o["well_column"]
        else "<file name>/<row>",
        "dataset": (f"{ds}/<{o['dataset_column']}>" if o["dataset"] else f"<{o['dataset_column']}>")
        if o["dataset_column"] else f"constant {ds!r}",
        "batch": (f"<dataset>/<{o['batch_column']}>" if o["dataset_column"] else o["batch_column"])
        if o["batch_column"] else "the plate",
        "plate": o["plate_column"] or "<file name>",
        "molecule_id": o["molecule_column"] or f"RDKit InChIKey of {o['smiles_column']}",
        "smiles": o["smiles_column"],
        "concentration_um": f"{o['dose_column']} [{o['dose_unit']}]" if o["dose_column"]
        else f"constant 1 {o['dose_unit']}",
        "is_control": f"{o['control_column']} in {o['control_values']}",
        "phenomic": f"feature columns, normalization {o['normalize']}",
    }


def summary_lines(ds: Dataset) -> list[str]:
    """What an import did, as a few human-readable lines (printed by ``import-profiles``).

    Args:
        ds: A dataset made by :func:`load_profiles`.

    Returns:
        Lines: inputs, features (count, first and last), numeric columns left out (all of them),
        dropped features, wells and molecules, skips, datasets, normalization.
    """
    m = ds.meta
    rep = m.get("loader_report", {})
    feats = m.get("feature_columns", [])
    lines = []
    src = m.get("sources", [])
    lines.append(f"read {len(src)} file(s), {rep.get('rows', 0):,} rows"
                 + (f"; {rep['not_matching_where']:,} rows did not match --where" if rep.get("not_matching_where") else ""))
    rule = m.get("feature_rule", "")
    rule = "default rule" if rule.startswith("default") else rule
    span = f"{feats[0]} ... {feats[-1]}" if len(feats) > 1 else (feats[0] if feats else "")
    lines.append(f"features: {len(feats)} ({rule}): {span}")
    left = m.get("left_out_numeric_columns", [])
    if left:
        lines.append(f"numeric columns not used as features ({len(left)}): {', '.join(left)}")
    else:
        lines.append("numeric columns not used as features: none")
    dropped = m.get("dropped_feature_columns", {})
    if dropped:
        lines.append(f"dropped feature columns ({len(dropped)}): "
                     + ", ".join(f"{k} ({v})" for k, v in list(dropped.items())[:10])
                     + (f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""))
    n_ctrl = int(ds.control_mask().sum())
    n_conc = len(set(ds.wells.column("concentration_um").drop_null().to_pylist()))
    lines.append(f"wells: {ds.n_wells:,} ({n_ctrl:,} control, {ds.n_wells - n_ctrl:,} treated); "
                 f"molecules: {ds.molecules.num_rows:,}; doses: {n_conc}")
    skips = {k: v for k, v in rep.items() if k.startswith("treated_") and k != "treated_wells" and v}
    if skips:
        lines.append("skipped treated wells: " + ", ".join(f"{v:,} {k[len('treated_'):].replace('_', ' ')}"
                                                            for k, v in skips.items()))
    merged = m.get("merged_molecule_ids", {})
    if merged:
        lines.append("merged molecule ids (one structure): "
                     + "; ".join(f"{', '.join(v)} -> {k}" for k, v in sorted(merged.items())))
    dsc = pc.value_counts(ds.wells.column("dataset")).to_pylist()
    lines.append("datasets: " + ", ".join(f"{d['values']} ({d['counts']:,} wells)" for d in sorted(dsc, key=lambda d: d["values"]))
                 + f"; plates: {len(set(ds.wells.column('plate').to_pylist()))}; batches: {len(ds.batches)}")
    norm = m.get("normalization", {})
    lines.append(f"normalization: {norm.get('method', 'none')}"
                 + (f" ({norm['components']} TVN components)" if "components" in norm else ""))
    return lines


def import_profiles(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    **options: Any,
) -> tuple[Dataset, Path]:
    """:func:`load_profiles`, then write the dataset directory atomically.

    The dataset is written to a temporary directory beside ``out`` and renamed into place, so an
    error leaves nothing behind and an existing ``out`` is only replaced once the new one is
    complete.

    Args:
        files: Input files.
        out: Output dataset directory.
        overwrite: Replace an existing dataset directory (never a directory that is neither empty
            nor a dataset).
        **options: :func:`load_profiles` keyword arguments.

    Returns:
        (the dataset, the directory written).

    Raises:
        FileExistsError: ``out`` holds a dataset and ``overwrite`` is False, or holds other files.
        NotADirectoryError: ``out`` is a file.
        Everything :func:`load_profiles` raises.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    ds = load_profiles(files, **options)
    ds.meta["command"] = profiles_command(files, out, **ds.meta["options"])
    return ds, write_dataset_atomic(ds, out, overwrite=overwrite)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Raise unless ``out`` may be written (see :func:`import_profiles`)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "wells.parquet").exists():
            raise FileExistsError(f"{out} is not empty and holds no dataset; refusing to replace it")
        if not overwrite:
            raise FileExistsError(f"{out / 'wells.parquet'} exists; pass --overwrite")


def write_dataset_atomic(ds: Dataset, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to a temporary directory beside ``out``, then move it into place.

    Args:
        ds: Dataset.
        out: Destination directory.
        overwrite: Replace an existing dataset directory.

    Returns:
        ``out``.

    Raises:
        FileExistsError / NotADirectoryError: see :func:`check_output_dir`.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the directory the usual mode
        save_dataset(ds, tmp, overwrite=True)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
