"""Activity calling: a p-value per (molecule, concentration) against the control wells.

The statistic (documented in docs/design/data.md):

1. Per dataset, every well is centered on the mean of the control wells of its own batch
   (control wells on the mean of the *other* controls of their batch: leave-one-out).
2. The control wells of each batch are split at random into a *fit* half and a *null* half.
   A TVN whitening (PCA on the centered fit-half controls, eigenvalue ridge ``eps``) is fitted
   per dataset. Fitting and null wells are disjoint, so the null is out-of-sample exactly as
   the treated wells are.
3. For a (molecule, concentration) sample with n replicate wells (across batches), the
   statistic is ``T = n·‖mean of its whitened wells‖²`` — a Hotelling-like distance of the
   replicate mean from the control centroid, in units of typical control variation (χ²-like
   under the null, growing with n·effect² under activity).
4. The null distribution for size n is built from ``n_null`` random sets of n null-half control
   wells, each set drawn from n distinct batches (replicates of a sample sit in distinct
   batches too), whitened the same way. ``p = (1 + #{T_null >= T}) / (1 + n_null)``.

Calls are ``active = p < cutoff``. A user can supply their own calls table instead
(:func:`molphenix.data.io.load_calls`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .preprocess import ControlMeans, _group_add, encode_labels, fit_tvn

__all__ = ["call_activity", "roc_auc", "evaluate_calls", "DEFAULT_CUTOFF"]

#: Default p-value cutoff: active = p < cutoff (DESIGN.md section 5).
DEFAULT_CUTOFF = 0.1


def _wells_inputs(dataset) -> tuple[pa.Table, np.ndarray]:
    if hasattr(dataset, "wells") and hasattr(dataset, "phenomic_matrix"):
        return dataset.wells, dataset.phenomic_matrix()
    if isinstance(dataset, pa.Table):
        from .io import from_tables  # noqa: F401  (validation happens in the caller)

        col = dataset.column("phenomic").combine_chunks()
        e = col.type.list_size
        return dataset, col.flatten().to_numpy(zero_copy_only=False).reshape(-1, e)
    raise TypeError("dataset must be a molphenix Dataset or a wells pyarrow.Table")


def call_activity(
    dataset,
    *,
    cutoff: float = DEFAULT_CUTOFF,
    n_null: int = 10000,
    eps: float = 0.05,
    n_components: int | None = None,
    seed: int = 0,
    chunk: int = 8192,
) -> pa.Table:
    """Compute activity p-values for every treated (molecule, concentration).

    Args:
        dataset: A :class:`molphenix.data.Dataset` (or a validated wells table).
        cutoff: ``active = p_value < cutoff``.
        n_null: Null sets per replicate count (p-values are >= 1 / (n_null + 1)).
        eps: TVN eigenvalue ridge relative to the mean eigenvalue.
        n_components: TVN components kept (default: all the fit-half controls support).
        seed: Seed for the control split and the null draws (calls are deterministic).
        chunk: Wells processed at a time (bounds memory).

    Returns:
        Table ``molecule_id`` (str), ``concentration_um`` (float64), ``p_value`` (float64),
        ``active`` (bool), ``n_wells`` (int32), ``statistic`` (float64), sorted by key; the
        schema metadata key ``molphenix`` holds the settings as JSON.

    Raises:
        ValueError: a batch has fewer than 2 control wells; there are no treated wells;
            ``cutoff`` outside (0, 1]; ``n_null`` < 1.
    """
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff must lie in (0, 1], got {cutoff}")
    if n_null < 1:
        raise ValueError(f"n_null must be >= 1, got {n_null}")
    wells, x = _wells_inputs(dataset)
    rng = np.random.default_rng([seed, 31])
    is_control = wells.column("is_control").to_numpy(zero_copy_only=False).astype(bool)
    if is_control.all():
        raise ValueError("wells: no treated wells to call")
    # per-batch control statistics (float64 sums): every centering below goes through them
    cm = ControlMeans.fit(x, wells.column("batch").to_numpy(zero_copy_only=False), is_control, chunk=chunk)
    batch_codes, batch_names = cm.codes, cm.names
    ds_codes, ds_names = encode_labels(wells.column("dataset").to_numpy(zero_copy_only=False))
    n_b = len(batch_names)
    e = x.shape[1]

    # ---- sample codes for treated wells
    treated = np.flatnonzero(~is_control)
    keys = pa.table(
        {
            "m": wells.column("molecule_id").take(pa.array(treated)),
            "c": wells.column("concentration_um").take(pa.array(treated)),
        }
    )
    uniq = keys.group_by(["m", "c"]).aggregate([]).sort_by([("m", "ascending"), ("c", "ascending")])
    s_index = {(m, c): i for i, (m, c) in enumerate(zip(uniq.column("m").to_pylist(), uniq.column("c").to_pylist()))}
    sample_of = np.fromiter(
        (s_index[k] for k in zip(keys.column("m").to_pylist(), keys.column("c").to_pylist())),
        dtype=np.int64,
        count=len(treated),
    )
    n_s = uniq.num_rows

    # ---- every batch needs 2 controls (leave-one-out centering of the controls)
    ctrl = np.flatnonzero(is_control)
    counts = cm.counts
    bad = np.flatnonzero(counts < 2)
    if bad.size:
        raise ValueError(
            f"wells: batch {batch_names[bad[0]]!r} has {counts[bad[0]]} control wells; "
            "activity calling needs at least 2 per batch"
        )

    # ---- split controls into fit / null halves, per batch
    order = ctrl[np.lexsort((rng.random(len(ctrl)), batch_codes[ctrl]))]
    ob = batch_codes[order]
    first = np.r_[0, np.flatnonzero(ob[1:] != ob[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    is_fit = (rank % 2) == 0
    fit_wells, null_wells = order[is_fit], order[~is_fit]

    def centered_controls(rows: np.ndarray) -> np.ndarray:
        return cm.center(x, rows, leave_one_out=True, dtype=np.float64)

    # ---- per dataset: TVN, whitened per-sample statistic, null, p-value
    n_wells = np.bincount(sample_of, minlength=n_s)
    # p-values of the (sample, dataset) groups; a sample measured in several datasets gets
    # its per-dataset p-values combined with Fisher's method.
    log_p_sum = np.zeros(n_s)
    n_groups = np.zeros(n_s, dtype=np.int64)
    stat = np.zeros(n_s)
    null_summary: dict[str, Any] = {}
    k_dims: dict[str, int] = {}
    for d, dname in enumerate(ds_names):
        fw = fit_wells[ds_codes[fit_wells] == d]
        nw_d = null_wells[ds_codes[null_wells] == d]
        if len(fw) < 2 or len(nw_d) < 1:
            raise ValueError(f"wells: dataset {dname!r} has fewer than 4 control wells")
        tvn = fit_tvn(centered_controls(fw), eps=eps, n_components=n_components)
        k_dims[str(dname)] = tvn.dim
        rows_d = np.flatnonzero(ds_codes[treated] == d)
        if rows_d.size == 0:
            continue
        # per-sample sums of centered wells, indexed locally to this dataset's samples;
        # float32 accumulators (sums of a handful of wells) keep this at n_samples_d x E x 4 B
        nd_all = np.bincount(sample_of[rows_d], minlength=n_s)
        touched = np.flatnonzero(nd_all)
        local = np.full(n_s, -1, dtype=np.int64)
        local[touched] = np.arange(len(touched))
        nd = nd_all[touched]
        acc = np.zeros((len(touched), e), dtype=np.float32)
        for s in range(0, len(rows_d), chunk):
            sel = rows_d[s : s + chunk]
            w = treated[sel]
            _group_add(acc, local[sample_of[sel]], cm.center(x, w, precision="float32"))
        # whiten the sums in blocks (float64 arithmetic, bounded temporaries)
        stat_d = np.empty(len(touched))
        for s in range(0, len(touched), chunk):
            blk = acc[s : s + chunk].astype(np.float64) - nd[s : s + chunk, None] * tvn.mean
            wsum = (blk @ tvn.components) * tvn.scale
            stat_d[s : s + chunk] = (wsum**2).sum(1) / nd[s : s + chunk]
        del acc
        stat[touched] += stat_d * nd / n_wells[touched]

        # null: whitened null-half controls of this dataset, sets from distinct batches
        null_w = tvn.transform(centered_controls(nw_d), dtype=np.float64)
        nb = batch_codes[nw_d]
        norder = np.argsort(nb, kind="stable")
        null_w, nb = null_w[norder], nb[norder]
        b_start = np.searchsorted(nb, np.arange(n_b))
        b_count = np.bincount(nb, minlength=n_b)
        usable = np.flatnonzero(b_count > 0)
        p_d = np.empty(len(touched))
        for n in np.unique(nd):
            n = int(n)
            replace = n > len(usable)
            if replace:
                bsel = usable[rng.integers(0, len(usable), size=(n_null, n))]
            else:
                bsel = usable[np.argsort(rng.random((n_null, len(usable))), axis=1)[:, :n]]
            pick = b_start[bsel] + np.floor(rng.random((n_null, n)) * b_count[bsel]).astype(np.int64)
            null_stat = np.empty(n_null)
            step = max(1, (1 << 21) // (n * null_w.shape[1]))  # bounded gather: ~16 MB
            for s in range(0, n_null, step):
                null_stat[s : s + step] = (null_w[pick[s : s + step]].sum(1) ** 2).sum(1) / n
            null_stat.sort()
            sel = np.flatnonzero(nd == n)
            ge = n_null - np.searchsorted(null_stat, stat_d[sel], side="left")
            p_d[sel] = (1.0 + ge) / (1.0 + n_null)
            null_summary[f"{dname}/n={n}"] = {
                "median": float(np.median(null_stat)),
                "distinct_batches": not replace,
            }
        log_p_sum[touched] += np.log(p_d)
        n_groups[touched] += 1
    p_value = np.exp(log_p_sum)  # exact for samples seen in one dataset
    multi = np.flatnonzero(n_groups > 1)
    if multi.size:
        p_value[multi] = _fisher_sf(-2.0 * log_p_sum[multi], n_groups[multi])

    settings: dict[str, Any] = {
        "method": "tvn_replicate_mean_vs_control_null",
        "cutoff": cutoff,
        "n_null": n_null,
        "eps": eps,
        "n_components": k_dims,
        "seed": seed,
        "null": null_summary,
        "n_fit_controls": int(len(fit_wells)),
        "n_null_controls": int(len(null_wells)),
    }
    table = pa.table(
        {
            "molecule_id": uniq.column("m").cast(pa.string()),
            "concentration_um": uniq.column("c").cast(pa.float64()),
            "p_value": pa.array(p_value, pa.float64()),
            "active": pa.array(p_value < cutoff),
            "n_wells": pa.array(n_wells.astype(np.int32)),
            "statistic": pa.array(stat, pa.float64()),
        }
    )
    return table.replace_schema_metadata({"molphenix": json.dumps(settings, sort_keys=True)})


def _fisher_sf(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Survival function of chi-square with 2m degrees of freedom at x (Fisher's method)."""
    out = np.empty(len(x))
    for i, (xi, mi) in enumerate(zip(x, m)):
        h = xi / 2.0
        term, acc = 1.0, 1.0
        for j in range(1, int(mi)):
            term *= h / j
            acc += term
        out[i] = min(1.0, np.exp(-h) * acc)
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties get half credit; Mann-Whitney U / (n+ n-)).

    Args:
        scores: Higher = more likely positive [N].
        labels: bool [N].

    Returns:
        AUC in [0, 1].

    Raises:
        ValueError: only one class present or shapes differ.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s))
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    ends = np.r_[starts[1:], len(ss)]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate_calls(calls: pa.Table, truth: pa.Table) -> dict[str, float]:
    """Compare activity calls with simulated truth.

    Args:
        calls: Table with ``molecule_id``, ``concentration_um``, ``p_value``, ``active``.
        truth: Table with ``molecule_id``, ``concentration_um``, ``active``.

    Returns:
        dict with ``roc_auc`` (score = −p, against truth ``active``), ``n``, ``n_active``,
        ``tpr`` and ``fpr`` of the ``active`` calls, and ``auc_by_concentration``.

    Raises:
        ValueError: no overlapping keys, or only one class.
    """
    t = truth.select(["molecule_id", "concentration_um", "active"]).rename_columns(
        ["molecule_id", "concentration_um", "true_active"]
    )
    j = calls.select(["molecule_id", "concentration_um", "p_value", "active"]).join(
        t, ["molecule_id", "concentration_um"], join_type="inner"
    )
    if j.num_rows == 0:
        raise ValueError("calls and truth share no (molecule_id, concentration_um) keys")
    p = j.column("p_value").to_numpy()
    y = j.column("true_active").to_numpy(zero_copy_only=False).astype(bool)
    called = j.column("active").to_numpy(zero_copy_only=False).astype(bool)
    conc = j.column("concentration_um").to_numpy()
    by_c = {}
    for c in np.unique(conc):
        m = conc == c
        if y[m].any() and (~y[m]).any():
            by_c[float(c)] = roc_auc(-p[m], y[m])
    return {
        "roc_auc": roc_auc(-p, y),
        "n": int(len(y)),
        "n_active": int(y.sum()),
        "tpr": float(called[y].mean()) if y.any() else float("nan"),
        "fpr": float(called[~y].mean()) if (~y).any() else float("nan"),
        "auc_by_concentration": by_c,
    }
