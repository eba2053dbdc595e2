"""Screen statistics: scale-free numbers that describe a phenomic screen, the same for any dataset.

One function per statistic, and :func:`screen_statistics` running them all. They take any
:class:`molphenix.data.Dataset` (a real import, the bundled ``cell-injury`` screen, or a
simulation), so a simulator can be checked against real data with one code path
(docs/design/data.md, "The simulator against real data"). Every number is *scale-free*: a
fraction, a correlation or a ratio to the control wells' own spread, so screens with different
feature spaces (352 CellProfiler features, a 384-d embedding) can be compared.

* :func:`activity_fractions` -- fraction of (molecule, concentration) samples called active
  (``p < cutoff``) for several cutoffs, and of molecules active at any / their top dose.
* :func:`replicate_consistency` -- *percent replicating* (Way et al. 2022, Cell Systems 13:911,
  "Morphology and gene expression profiling provide complementary information for mapping
  cell state"): the share of samples whose median pairwise Pearson correlation between
  replicate wells exceeds the 95th percentile of the same statistic over random groups of
  wells of *different* samples (same group size).
* :func:`control_distance` -- each well's distance from its batch's control centroid divided by
  the RMS leave-one-out distance of that batch's control wells (controls: about 1).
* :func:`soft_label_pairs` -- arctan-L2 similarity distributions of inactive-inactive,
  active-active and active-inactive sample pairs in the space the S2L soft labels use
  (control-centered replicate averages divided by the scale fitted to a soft-positive fraction,
  as the trainer does), and the share of each kind inside the soft-label window.
* :func:`variance_share` -- share of the variance explained by plate (and batch): the
  unbiased omega-squared of a one-way layout, summed over features.
* :func:`position_effects` -- well-position (plate address) effects: the share of the control
  wells' variance explained by address, row and column, how alike wells at the same address of
  different plates are, and how often replicate wells share an address.

Nothing here imports torch or the compiled extension.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .activity import DEFAULT_CUTOFF
from .preprocess import center_by_controls, encode_labels

__all__ = [
    "activity_fractions",
    "arctan_similarity_from_quantile",
    "control_calibration",
    "control_distance",
    "position_effects",
    "replicate_consistency",
    "screen_statistics",
    "soft_label_pairs",
    "variance_share",
    "well_addresses",
]

#: Pair kinds of :func:`soft_label_pairs`: both inactive, both active, one of each.
PAIR_KINDS = ("inactive-inactive", "active-active", "active-inactive")


# ---------------------------------------------------------------------------- helpers


def _wells(dataset) -> tuple[pa.Table, np.ndarray]:
    if not (hasattr(dataset, "wells") and hasattr(dataset, "phenomic_matrix")):
        raise TypeError(f"dataset: expected a molphenix Dataset, got {type(dataset).__name__}")
    return dataset.wells, dataset.phenomic_matrix()


def _col(wells: pa.Table, name: str) -> np.ndarray:
    return wells.column(name).to_numpy(zero_copy_only=False)


def _calls_of(dataset, calls) -> pa.Table:
    calls = calls if calls is not None else getattr(dataset, "calls", None)
    if calls is None:
        raise ValueError("calls: the dataset has no activity calls; pass calls= (molphenix.data.call_activity)")
    for c in ("molecule_id", "concentration_um", "p_value"):
        if c not in calls.column_names:
            raise ValueError(f"calls: missing column {c!r}")
    return calls


def _sample_codes(wells: pa.Table, rows: np.ndarray) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Sample code per row (rows: treated wells) and the sorted sample keys."""
    mol = wells.column("molecule_id").take(pa.array(rows)).to_pylist()
    conc = _col(wells, "concentration_um")[rows].tolist()
    keys = sorted(set(zip(mol, conc)))
    index = {k: i for i, k in enumerate(keys)}
    return np.fromiter((index[k] for k in zip(mol, conc)), dtype=np.int64, count=len(rows)), keys


def _p_lookup(calls: pa.Table, keys: Sequence[tuple[str, float]]) -> np.ndarray:
    cm = calls.column("molecule_id").to_pylist()
    cc = calls.column("concentration_um").to_numpy(zero_copy_only=False).tolist()
    cp = calls.column("p_value").to_numpy(zero_copy_only=False)
    lookup = {k: float(v) for k, v in zip(zip(cm, cc), cp)}
    return np.array([lookup.get(k, np.nan) for k in keys])


def _select_dataset(wells: pa.Table, dataset_name: str | None) -> np.ndarray:
    """bool [n_wells] of the wells of one ``dataset`` value (all wells for None)."""
    if dataset_name is None:
        return np.ones(wells.num_rows, bool)
    d = _col(wells, "dataset").astype(str)
    if dataset_name not in set(d.tolist()):
        raise ValueError(f"dataset_name: {dataset_name!r} is not one of {sorted(set(d.tolist()))}")
    return d == dataset_name


def _quantiles(v: np.ndarray, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return {f"q{int(round(q * 100)):02d}": float("nan") for q in qs}
    return {f"q{int(round(q * 100)):02d}": float(x) for q, x in zip(qs, np.quantile(v, qs))}


# ---------------------------------------------------------------------------- activity


def activity_fractions(
    dataset, calls: pa.Table | None = None, *, cutoffs: Sequence[float] = (0.1, 0.05, 0.01),
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """Fraction of samples (and molecules) called active.

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        calls: Activity calls (default ``dataset.calls``): ``molecule_id``,
            ``concentration_um``, ``p_value``.
        cutoffs: ``active = p < cutoff`` for each.
        dataset_name: Only samples measured in this ``dataset`` (default: all).

    Returns:
        ``{"n_samples", "n_molecules", "samples": {cutoff: fraction}, "molecules_any_dose":
        {cutoff: fraction}, "molecules_top_dose": {cutoff: fraction}, "by_concentration":
        {concentration: fraction at cutoffs[0]}}`` (cutoff keys as strings). A molecule's top
        dose is its highest measured concentration.

    Raises:
        ValueError: no calls, or a cutoff outside (0, 1].
    """
    wells, _ = _wells(dataset)
    calls = _calls_of(dataset, calls)
    for c in cutoffs:
        if not 0 < c <= 1:
            raise ValueError(f"cutoffs: each must lie in (0, 1], got {c}")
    sel = _select_dataset(wells, dataset_name) & ~_col(wells, "is_control").astype(bool)
    rows = np.flatnonzero(sel)
    if rows.size == 0:
        raise ValueError("dataset: no treated wells")
    _codes, keys = _sample_codes(wells, rows)
    p = _p_lookup(calls, keys)
    mol = np.array([k[0] for k in keys], dtype=object)
    conc = np.array([k[1] for k in keys])
    has = np.isfinite(p)
    mol_codes, mol_names = encode_labels(mol)
    top = np.zeros(len(keys), bool)
    for m in range(len(mol_names)):
        idx = np.flatnonzero(mol_codes == m)
        top[idx[np.argmax(conc[idx])]] = True
    out: dict[str, Any] = {"n_samples": int(len(keys)), "n_samples_called": int(has.sum()),
                           "n_molecules": int(len(mol_names)), "samples": {}, "molecules_any_dose": {},
                           "molecules_top_dose": {}}
    for c in cutoffs:
        act = has & (p < c)
        any_dose = np.zeros(len(mol_names), bool)
        np.logical_or.at(any_dose, mol_codes, act)
        out["samples"][str(c)] = float(act[has].mean()) if has.any() else float("nan")
        out["molecules_any_dose"][str(c)] = float(any_dose.mean())
        out["molecules_top_dose"][str(c)] = float(act[top & has].mean()) if (top & has).any() else float("nan")
    c0 = cutoffs[0]
    out["by_concentration"] = {
        str(float(c)): float((p[(conc == c) & has] < c0).mean()) for c in np.unique(conc) if ((conc == c) & has).any()
    }
    return out


# ---------------------------------------------------------------------------- replicates


def _median_pairwise_corr(z: np.ndarray) -> float:
    """Median off-diagonal Pearson correlation of the rows of z (rows already centered and
    unit-norm across features)."""
    k = z.shape[0]
    c = z @ z.T
    return float(np.median(c[np.triu_indices(k, 1)]))


def replicate_consistency(
    dataset, calls: pa.Table | None = None, *, dataset_name: str | None = None, max_group: int | None = 4,
    n_null: int = 1000, null_quantile: float = 0.95, p_cutoff: float = DEFAULT_CUTOFF, seed: int = 0,
) -> dict[str, Any]:
    """Percent replicating (Way et al. 2022) and the mean replicate correlation.

    Wells are centered on their batch's control mean. For every sample (molecule,
    concentration) with at least two wells, its *replicate correlation* is the median Pearson
    correlation (across features) over all pairs of its wells. The null: ``n_null`` random
    groups of the same size, each of wells of distinct samples of the same selection; a
    sample *replicates* when its replicate correlation exceeds the ``null_quantile`` quantile
    of the null for its group size.

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        calls: Activity calls (default ``dataset.calls``; ``None`` there too: no split by
            activity).
        dataset_name: Only wells of this ``dataset`` (replicates are counted within it).
        max_group: Samples with more wells use a seeded random subset of this many
            (default 4: screens with very unequal replicate counts become comparable);
            ``None`` keeps all.
        n_null: Null groups per group size.
        null_quantile: Quantile of the null a sample must exceed.
        p_cutoff: Active = ``p < p_cutoff`` for the split by activity.
        seed: Seed of the subsets and the null.

    Returns:
        ``{"n_samples", "percent_replicating", "mean_replicate_corr", "null_mean_corr",
        "null_threshold" (by group size), "active": {...}, "inactive": {...}}`` -- the
        sub-dicts hold ``n_samples``, ``percent_replicating`` and ``mean_replicate_corr`` of the
        samples called active / inactive (absent without calls). Percentages are fractions.

    Raises:
        ValueError: fewer than two samples with two or more wells; bad arguments.
    """
    if max_group is not None and max_group < 2:
        raise ValueError(f"max_group: must be >= 2 or None, got {max_group}")
    if n_null < 10:
        raise ValueError(f"n_null: must be >= 10, got {n_null}")
    if not 0 < null_quantile < 1:
        raise ValueError(f"null_quantile: must lie in (0, 1), got {null_quantile}")
    wells, x = _wells(dataset)
    is_control = _col(wells, "is_control").astype(bool)
    xc = center_by_controls(x, _col(wells, "batch"), is_control, dtype=np.float64)
    rows = np.flatnonzero(_select_dataset(wells, dataset_name) & ~is_control)
    codes, keys = _sample_codes(wells, rows)
    # rows standardized across features: the Pearson correlation is then a dot product
    z = xc[rows]
    z = z - z.mean(1, keepdims=True)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng([seed, 41])
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(keys))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    groups: list[np.ndarray] = []
    kept: list[int] = []
    for s in range(len(keys)):
        if counts[s] < 2:
            continue
        g = order[starts[s] : starts[s] + counts[s]]
        if max_group is not None and len(g) > max_group:
            g = np.sort(rng.choice(g, size=max_group, replace=False))
        groups.append(g)
        kept.append(s)
    if len(groups) < 2:
        raise ValueError("dataset: fewer than two samples with two or more wells; cannot measure replicate consistency")
    corr = np.array([_median_pairwise_corr(z[g]) for g in groups])
    sizes = np.array([len(g) for g in groups])
    # null per group size: wells of distinct samples
    n_s = len(keys)
    thresh: dict[int, float] = {}
    null_all = []
    for k in np.unique(sizes):
        k = int(k)
        if k > n_s:
            raise ValueError(f"dataset: a group of {k} wells but only {n_s} samples for the null")
        vals = np.empty(n_null)
        for t in range(n_null):
            samp = rng.choice(n_s, size=k, replace=False)
            pick = starts[samp] + np.floor(rng.random(k) * counts[samp]).astype(np.int64)
            vals[t] = _median_pairwise_corr(z[order[pick]])
        thresh[k] = float(np.quantile(vals, null_quantile))
        null_all.append(vals)
    rep = corr > np.array([thresh[int(k)] for k in sizes])
    null_cat = np.concatenate(null_all)
    out: dict[str, Any] = {
        "n_samples": int(len(groups)),
        "percent_replicating": float(rep.mean()),
        "mean_replicate_corr": float(corr.mean()),
        "null_mean_corr": float(null_cat.mean()),
        "null_threshold": {str(k): v for k, v in thresh.items()},
        "group_sizes": {str(int(k)): int((sizes == k).sum()) for k in np.unique(sizes)},
    }
    calls = calls if calls is not None else getattr(dataset, "calls", None)
    if calls is not None:
        p = _p_lookup(_calls_of(dataset, calls), [keys[s] for s in kept])
        for name, m in (("active", p < p_cutoff), ("inactive", ~(p < p_cutoff))):
            out[name] = {
                "n_samples": int(m.sum()),
                "percent_replicating": float(rep[m].mean()) if m.any() else float("nan"),
                "mean_replicate_corr": float(corr[m].mean()) if m.any() else float("nan"),
            }
    return out


# ---------------------------------------------------------------------------- distances


def control_distance(
    dataset, calls: pa.Table | None = None, *, dataset_name: str | None = None, p_cutoff: float = DEFAULT_CUTOFF,
    control_quantile: float = 0.95,
) -> dict[str, Any]:
    """Distance of each well from its batch's control centroid, in units of control spread.

    ``r = ‖x - m_b‖ / rms_b`` with ``m_b`` the mean of batch b's control wells and ``rms_b`` the
    root-mean-square leave-one-out distance of b's control wells from the mean of the *other*
    controls of b (so control wells have ``r`` near 1 by construction, and every batch is in
    its own noise units). Euclidean, in the feature space as stored.

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        calls: Activity calls (default ``dataset.calls``; optional: splits treated wells by
            their sample's call).
        dataset_name: Only wells of this ``dataset``.
        p_cutoff: Active = ``p < p_cutoff``.
        control_quantile: The share of wells beyond this quantile of the control ``r`` is
            reported (``beyond_control``).

    Returns:
        ``{"control": q, "treated": q, "active": q, "inactive": q, "beyond_control": {...}}``,
        each ``q`` the 5/25/50/75/95% quantiles of ``r`` plus ``n``; ``beyond_control`` the
        fraction of treated / active / inactive wells (and, as the calibration, of control
        wells) above the control quantile.

    Raises:
        ValueError: a batch with fewer than two control wells.
    """
    wells, x = _wells(dataset)
    is_control = _col(wells, "is_control").astype(bool)
    batches = _col(wells, "batch")
    xc = center_by_controls(x, batches, is_control, leave_one_out=True, dtype=np.float64)
    r = np.linalg.norm(xc, axis=1)
    codes, names = encode_labels(batches)
    ms = np.bincount(codes[is_control], weights=r[is_control] ** 2, minlength=len(names))
    n = np.bincount(codes[is_control], minlength=len(names))
    rms = np.sqrt(ms / np.maximum(n, 1))
    r = r / np.maximum(rms[codes], 1e-12)
    sel = _select_dataset(wells, dataset_name)
    groups = {"control": sel & is_control, "treated": sel & ~is_control}
    calls = calls if calls is not None else getattr(dataset, "calls", None)
    if calls is not None:
        rows = np.flatnonzero(groups["treated"])
        codes_s, keys = _sample_codes(wells, rows)
        act = _p_lookup(_calls_of(dataset, calls), keys)[codes_s] < p_cutoff
        a = np.zeros(len(r), bool)
        a[rows[act]] = True
        groups["active"] = a
        groups["inactive"] = groups["treated"] & ~a
    thr = float(np.quantile(r[groups["control"]], control_quantile))
    out: dict[str, Any] = {}
    for name, m in groups.items():
        out[name] = {"n": int(m.sum()), **_quantiles(r[m])}
    out["beyond_control"] = {"quantile": control_quantile,
                             **{name: float((r[m] > thr).mean()) if m.any() else float("nan") for name, m in groups.items()}}
    return out


# ---------------------------------------------------------------------------- soft labels


def arctan_similarity_from_quantile(d2: np.ndarray, quantile: float, threshold: float = 0.75) -> np.ndarray:
    """The arctan-L2 similarity ``s~ = 1 - (4/pi) arctan(d² / (σ² c))`` at the scale σ that
    puts the squared distance ``quantile`` exactly on the soft-label threshold.

    With ``σ² = quantile / w`` and ``w = c·tan(pi (1 - threshold) / 4)`` (what
    ``molphenix.losses.fit_similarity_scale`` fits), ``c`` cancels:
    ``s~ = 1 - (4/pi) arctan(tan(pi (1 - threshold) / 4) · d² / quantile)``, and
    ``s~ >= threshold`` exactly when ``d² <= quantile``.

    Args:
        d2: Squared distances (unscaled).
        quantile: The fitted squared-distance quantile (> 0).
        threshold: Soft-label threshold in (-1, 1).

    Returns:
        ``s~`` with the shape of ``d2``.

    Raises:
        ValueError: ``quantile <= 0`` or ``threshold`` outside (-1, 1).
    """
    if not quantile > 0:
        raise ValueError(f"quantile: must be > 0, got {quantile}")
    if not -1 < threshold < 1:
        raise ValueError(f"threshold: must lie in (-1, 1), got {threshold}")
    t = math.tan(math.pi * (1.0 - threshold) / 4.0)
    return 1.0 - (4.0 / math.pi) * np.arctan(t * np.asarray(d2, dtype=np.float64) / quantile)


def _pair_quantile(x: np.ndarray, fraction: float, seed: int, n_pairs: int) -> float:
    """The ``fraction`` quantile of squared distances of ``n_pairs`` random row pairs, drawn
    exactly as ``molphenix.losses.fit_similarity_scale`` draws them (same seed -> same pairs)."""
    n = x.shape[0]
    rng = np.random.default_rng(int(seed))
    i = rng.integers(0, n, size=int(n_pairs))
    j = (i + rng.integers(1, n, size=int(n_pairs))) % n
    d2 = np.empty(int(n_pairs))
    chunk = max(1, (1 << 22) // x.shape[1])
    for s in range(0, int(n_pairs), chunk):
        diff = x[i[s : s + chunk]] - x[j[s : s + chunk]]
        d2[s : s + chunk] = np.einsum("ij,ij->i", diff, diff)
    return float(np.quantile(d2, fraction))


def soft_label_pairs(
    dataset, calls: pa.Table | None = None, *, dataset_name: str | None = None,
    soft_positive_fraction: float = 0.005, inactive_rate: float = 0.1, threshold: float = 0.75,
    p_cutoff: float = DEFAULT_CUTOFF, n_pairs: int = 200_000, grid: int = 201, seed: int = 0,
) -> dict[str, Any]:
    """arctan-L2 similarity of sample pairs by kind, in the S2L soft-label space.

    The space is the trainer's (``sim_space="input"``): control-centered wells
    (:class:`~molphenix.data.ReplicateSampler`, ``normalize="center"``), each sample the mean of
    a random subset of its replicate wells, divided by the scale fitted so that a fraction
    ``soft_positive_fraction`` of random pairs of training inputs is inside the soft-label
    window. The scale is fitted as the trainer fits it: on the first 8,192 samples of four
    epochs of the sampler (actives every epoch, inactives with probability ``inactive_rate``),
    averaged with the stream ``(seed, 77)``, pairs drawn as ``fit_similarity_scale`` draws them
    (100,000, seed ``seed``). The distributions are then measured on every sample once (one
    random replicate subset each, no undersampling): all pairs when there are at most
    ``n_pairs`` of them, else ``n_pairs`` random pairs.

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        calls: Activity calls (default ``dataset.calls``); active = ``p < p_cutoff``.
        dataset_name: Only wells of this ``dataset``.
        soft_positive_fraction: The trainer's ``soft_positive_fraction`` (f).
        inactive_rate: The trainer's inactive undersampling rate.
        threshold: Soft-label threshold θ (``s~ >= θ`` is inside the window).
        p_cutoff: Activity cutoff.
        n_pairs: Pair cap for the distributions.
        grid: Points of the similarity grid for the CDFs (from -1 to 1).
        seed: The trainer's seed.

    Returns:
        ``{"n_samples", "n_active", "sigma2_quantile", "window_fraction" (all pairs, and by
        kind), "median_similarity" (by kind), "median_d2_ratio" (median d² of a kind over
        the inactive-inactive median), "cdf": {"s": grid, kind: CDF values}}``. CDF of ``s~``
        per kind on the grid.

    Raises:
        ValueError: no calls; fewer than two samples; bad arguments.
    """
    from .sampling import ReplicateSampler

    if not 0 < soft_positive_fraction < 1:
        raise ValueError(f"soft_positive_fraction: must lie in (0, 1), got {soft_positive_fraction}")
    if not 0 <= inactive_rate <= 1:
        raise ValueError(f"inactive_rate: must lie in [0, 1], got {inactive_rate}")
    calls = _calls_of(dataset, calls)
    wells, _x = _wells(dataset)
    sel = _select_dataset(wells, dataset_name)
    train_like = ReplicateSampler(dataset, calls, wells=sel, p_cutoff=p_cutoff, inactive_rate=inactive_rate,
                                  normalize="center", seed=seed)
    if train_like.num_samples < 2:
        raise ValueError("dataset: fewer than two samples")
    # -- the scale, as the trainer fits it (molphenix.train: four epochs, 8,192 samples)
    idx = np.concatenate([train_like.epoch_samples(e) for e in range(4)])[:8192]
    if idx.size < 2:
        idx = np.arange(train_like.num_samples)
    xs, _ = train_like.average(idx, np.random.default_rng([seed, 77]))
    xs = xs.astype(np.float64)
    q = _pair_quantile(xs, soft_positive_fraction, seed, 100_000)
    if not q > 0:  # duplicated rows (single-well samples drawn in several epochs): the trainer's fallback
        q = _pair_quantile(np.unique(xs, axis=0), soft_positive_fraction, seed, 100_000)
    # -- every sample once
    all_idx = np.arange(train_like.num_samples)
    xa, _ = train_like.average(all_idx, np.random.default_rng([seed, 78]))
    xa = xa.astype(np.float64)
    act = train_like.active
    n = len(xa)
    total = n * (n - 1) // 2
    if total <= n_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng([seed, 79])
        i = rng.integers(0, n, size=n_pairs)
        j = (i + rng.integers(1, n, size=n_pairs)) % n
    d2 = np.empty(len(i))
    chunk = max(1, (1 << 22) // xa.shape[1])
    for s in range(0, len(i), chunk):
        diff = xa[i[s : s + chunk]] - xa[j[s : s + chunk]]
        d2[s : s + chunk] = np.einsum("ij,ij->i", diff, diff)
    s_tilde = arctan_similarity_from_quantile(d2, q, threshold)
    ai, aj = act[i], act[j]
    kinds = {"inactive-inactive": ~ai & ~aj, "active-active": ai & aj, "active-inactive": ai ^ aj}
    g = np.linspace(-1.0, 1.0, grid)
    out: dict[str, Any] = {
        "n_samples": int(n),
        "n_active": int(act.sum()),
        "n_pairs": int(len(d2)),
        "sigma2_quantile": q,
        "soft_positive_fraction": soft_positive_fraction,
        "window_fraction": {"all": float((d2 <= q).mean())},
        "pair_share": {},
        "median_similarity": {},
        "median_d2_ratio": {},
        "cdf": {"s": g.tolist()},
    }
    ii_med = float(np.median(d2[kinds["inactive-inactive"]])) if kinds["inactive-inactive"].any() else float("nan")
    for k, m in kinds.items():
        out["pair_share"][k] = float(m.mean())
        if not m.any():
            out["window_fraction"][k] = float("nan")
            out["median_similarity"][k] = float("nan")
            out["median_d2_ratio"][k] = float("nan")
            out["cdf"][k] = None
            continue
        out["window_fraction"][k] = float((d2[m] <= q).mean())
        out["median_similarity"][k] = float(np.median(s_tilde[m]))
        out["median_d2_ratio"][k] = float(np.median(d2[m]) / ii_med) if ii_med > 0 else float("nan")
        sv = np.sort(s_tilde[m])
        out["cdf"][k] = (np.searchsorted(sv, g, side="right") / len(sv)).tolist()
    return out


# ---------------------------------------------------------------------------- variance


def _omega_squared(x: np.ndarray, groups: np.ndarray, df_offset: int = 1) -> float:
    """Unbiased share of the total variance explained by group means (omega-squared, summed
    over features): ``(SS_b - (G - df_offset) MS_w) / (SS_t + MS_w)``; groups with one
    member are dropped. ``df_offset`` > 1 when the data were already centered within
    ``df_offset`` super-groups (plates within batches)."""
    codes, names = encode_labels(groups)
    cnt = np.bincount(codes, minlength=len(names))
    keep = cnt[codes] >= 2
    x, codes = x[keep], codes[keep]
    if len(x) < 3:
        return float("nan")
    codes, _ = encode_labels(codes)
    cnt = np.bincount(codes)
    g = len(cnt)
    if g < 2 or len(x) - g < 1:
        return float("nan")
    sums = np.zeros((g, x.shape[1]))
    np.add.at(sums, codes, x)
    means = sums / cnt[:, None]
    grand = x.mean(0)
    ss_t = float(((x - grand) ** 2).sum())
    ss_w = float(((x - means[codes]) ** 2).sum())
    ss_b = ss_t - ss_w
    ms_w = ss_w / (len(x) - g)
    df_b = max(g - df_offset, 0)
    return (ss_b - df_b * ms_w) / (ss_t + ms_w)


def variance_share(dataset, *, dataset_name: str | None = None) -> dict[str, float]:
    """Share of the variance explained by plate and by batch (omega-squared, summed over features).

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        dataset_name: Only wells of this ``dataset``.

    Returns:
        ``plate_controls`` (plate share of the control wells' variance, raw features: plate
        and batch effects together), ``batch_controls`` (batch share, raw),
        ``plate_within_batch_controls`` (plate share after centering each batch on its control
        mean: what per-batch centering leaves) and ``plate_all_wells`` (plate share over all
        wells, raw; in a real screen the plate layout also carries the treatments). NaN where
        there are fewer than two groups with two or more wells.
    """
    wells, x = _wells(dataset)
    sel = _select_dataset(wells, dataset_name)
    is_control = _col(wells, "is_control").astype(bool)
    plates = _col(wells, "plate").astype(str)
    batches = _col(wells, "batch").astype(str)
    c = sel & is_control
    xc = x[c].astype(np.float64)
    centered = center_by_controls(x, batches, is_control, dtype=np.float64)[c]
    n_batch = len(set(batches[c].tolist()))
    return {
        "plate_controls": _omega_squared(xc, plates[c]),
        "batch_controls": _omega_squared(xc, batches[c]),
        "plate_within_batch_controls": _omega_squared(centered, plates[c], df_offset=n_batch),
        "plate_all_wells": _omega_squared(x[sel].astype(np.float64), plates[sel]),
    }


# ---------------------------------------------------------------------------- positions

_ROW_LETTERS = "ABCDEFGHIJKLMNOP"


def well_addresses(dataset) -> np.ndarray | None:
    """Plate address per well (``"A1"`` ... ``"P24"``), or None when unknown.

    Taken from an ``address`` column when the wells table has one, else from the well id's
    last ``-`` or ``/``-separated part when every well id ends in an address (``A01``, ``B7``).

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.

    Returns:
        Object array [n_wells] of normalized addresses (row letter + column number), or None.
    """
    import re

    wells, _ = _wells(dataset)
    if "address" in wells.column_names:
        raw = [str(a) for a in wells.column("address").to_pylist()]
    else:
        raw = [re.split(r"[-/]", str(w))[-1] for w in wells.column("well_id").to_pylist()]
    pat = re.compile(r"^([A-Pa-p])0*([1-9]|1[0-9]|2[0-4])$")
    out = []
    for a in raw:
        m = pat.match(a)
        if m is None:
            return None
        out.append(f"{m.group(1).upper()}{int(m.group(2))}")
    return np.array(out, dtype=object)


def position_effects(
    dataset, calls: pa.Table | None = None, *, dataset_name: str | None = None, p_cutoff: float = DEFAULT_CUTOFF,
    max_wells: int = 3000, seed: int = 0,
) -> dict[str, Any]:
    """Well-position effects, measured on control-centered wells (per batch).

    Args:
        dataset: A :class:`~molphenix.data.Dataset` whose wells carry plate addresses
            (:func:`well_addresses`).
        calls: Activity calls (default ``dataset.calls``; optional: the inactive-sample
            comparison needs them).
        dataset_name: Only wells of this ``dataset``.
        p_cutoff: Active = ``p < p_cutoff``.
        max_wells: Pairwise correlations use at most this many wells of a kind (seeded subset).
        seed: Seed of the subsets.

    Returns:
        ``{"available": False}`` without addresses; else ``address_controls``,
        ``row_controls``, ``column_controls`` (omega-squared shares of the control wells'
        variance), ``control_corr_same_address`` / ``control_corr_other_address`` (mean
        Pearson correlation of control-well pairs on different plates at the same / a different
        address; the same-address pairs also split into ``..._same_batch`` / ``..._other_batch``), ``replicate_pairs_same_address`` (fraction of replicate-well pairs sharing an
        address) and, with calls, ``inactive_replicate_corr`` (pairs of replicate wells of an
        inactive sample) beside ``inactive_same_address_corr`` (pairs of wells of *different*
        molecules' inactive samples at the same address on different plates): if the two are
        alike, inactive samples replicate through their position only.
    """
    addr = well_addresses(dataset)
    if addr is None:
        return {"available": False}
    wells, x = _wells(dataset)
    is_control = _col(wells, "is_control").astype(bool)
    xc = center_by_controls(x, _col(wells, "batch"), is_control, dtype=np.float64)
    sel = _select_dataset(wells, dataset_name)
    plate = _col(wells, "plate").astype(str)
    row = np.array([a[0] for a in addr], dtype=object)
    col = np.array([a[1:] for a in addr], dtype=object)
    c = sel & is_control
    out: dict[str, Any] = {
        "available": True,
        "address_controls": _omega_squared(xc[c], addr[c]),
        "row_controls": _omega_squared(xc[c], row[c]),
        "column_controls": _omega_squared(xc[c], col[c]),
    }
    z = xc - xc.mean(1, keepdims=True)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng([seed, 43])

    def subset(mask: np.ndarray) -> np.ndarray:
        i = np.flatnonzero(mask)
        return i if len(i) <= max_wells else np.sort(rng.choice(i, size=max_wells, replace=False))

    ci = subset(c)
    cc = z[ci] @ z[ci].T
    same_a = addr[ci][:, None] == addr[ci][None, :]
    other_p = plate[ci][:, None] != plate[ci][None, :]
    m1, m2 = same_a & other_p, ~same_a & other_p
    out["control_corr_same_address"] = float(cc[m1].mean()) if m1.any() else float("nan")
    out["control_corr_other_address"] = float(cc[m2].mean()) if m2.any() else float("nan")
    batch = _col(wells, "batch").astype(str)
    same_b = batch[ci][:, None] == batch[ci][None, :]
    for name, m in (("same_batch", m1 & same_b), ("other_batch", m1 & ~same_b)):
        out[f"control_corr_same_address_{name}"] = float(cc[m].mean()) if m.any() else float("nan")
    t = np.flatnonzero(sel & ~is_control)
    codes, keys = _sample_codes(wells, t)
    order = np.argsort(codes, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(keys)))]
    same = total = 0
    for s_ in range(len(keys)):
        g = t[order[bounds[s_] : bounds[s_ + 1]]]
        if len(g) < 2:
            continue
        a = addr[g]
        k = len(g)
        total += k * (k - 1) // 2
        same += int(((a[:, None] == a[None, :]).sum() - k) // 2)
    out["replicate_pairs_same_address"] = same / total if total else float("nan")
    calls = calls if calls is not None else getattr(dataset, "calls", None)
    if calls is not None:
        p = _p_lookup(_calls_of(dataset, calls), keys)
        inact_w = t[~(p[codes] < p_cutoff)]
        ii = subset(np.isin(np.arange(len(addr)), inact_w))
        if len(ii) >= 2:
            zz = z[ii] @ z[ii].T
            key_of = np.full(len(addr), -1, dtype=np.int64)
            key_of[t] = codes
            mol = np.array(wells.column("molecule_id").to_pylist(), dtype=object)
            same_sample = key_of[ii][:, None] == key_of[ii][None, :]
            same_mol = mol[ii][:, None] == mol[ii][None, :]
            off = ~np.eye(len(ii), dtype=bool)
            rep = same_sample & off
            pos = ~same_mol & (addr[ii][:, None] == addr[ii][None, :]) & (plate[ii][:, None] != plate[ii][None, :])
            out["inactive_replicate_corr"] = float(zz[rep].mean()) if rep.any() else float("nan")
            out["inactive_same_address_corr"] = float(zz[pos].mean()) if pos.any() else float("nan")
            out["inactive_pairs"] = {"replicate": int(rep.sum() // 2), "same_address": int(pos.sum() // 2)}
    return out


def control_calibration(
    dataset, *, dataset_name: str | None = None, n_wells: int = 2, share: float = 0.3,
    cutoffs: Sequence[float] = (0.1, 0.05, 0.01), seed: int = 0,
) -> dict[str, Any]:
    """False-positive rate of :func:`molphenix.data.call_activity` on control wells posing as samples.

    A share of the control wells is relabelled as treated *pseudo-samples* of ``n_wells`` wells
    each (on distinct plates), once with the wells of a pseudo-sample at the *same* plate
    address (as the replicates of a screen whose replicate plates share a plate map) and once
    at random addresses; the other control wells stay controls, and the calls are made as for
    real samples. Without position effects both rates are near the cutoff; a same-address rate
    above it is the share of inactive samples that position alone makes look active.

    Args:
        dataset: A :class:`~molphenix.data.Dataset` with plate addresses
            (:func:`well_addresses`).
        dataset_name: Only wells of this ``dataset`` (default: the first).
        n_wells: Wells per pseudo-sample.
        share: Share of the control wells turned into pseudo-samples (per run).
        cutoffs: Report ``p < cutoff`` for each.
        seed: Seed of the selection and of the calls.

    Returns:
        ``{"available": False}`` without addresses; else ``{"same_address": {...},
        "random_address": {...}}`` with ``n`` (pseudo-samples) and the fraction called active
        at each cutoff.
    """
    from .activity import call_activity as _call

    addr = well_addresses(dataset)
    if addr is None:
        return {"available": False}
    wells, x = _wells(dataset)
    ds_col = _col(wells, "dataset").astype(str)
    name = dataset_name if dataset_name is not None else sorted(set(ds_col.tolist()))[0]
    sel = _select_dataset(wells, name)
    is_control = _col(wells, "is_control").astype(bool)
    plate = _col(wells, "plate").astype(str)
    ctrl = np.flatnonzero(sel & is_control)
    out: dict[str, Any] = {"available": True}
    for mode in ("same_address", "random_address"):
        rng = np.random.default_rng([seed, 47, 0 if mode == "same_address" else 1])
        budget = int(share * len(ctrl))
        order = ctrl[rng.permutation(len(ctrl))]
        groups: list[np.ndarray] = []
        used = 0
        if mode == "same_address":
            for a in np.unique(addr[order]):
                at = order[addr[order] == a]
                # one well per plate, then groups of n_wells
                _, first = np.unique(plate[at], return_index=True)
                at = at[np.sort(first)]
                for g in range(len(at) // n_wells):
                    if used + n_wells > budget:
                        break
                    groups.append(at[g * n_wells : (g + 1) * n_wells])
                    used += n_wells
        else:
            pool = list(order)
            while used + n_wells <= budget and len(pool) >= n_wells:
                g = [pool.pop()]
                while len(g) < n_wells and pool:
                    k = next((i for i in range(len(pool) - 1, -1, -1) if plate[pool[i]] not in {plate[j] for j in g}), None)
                    if k is None:
                        break
                    g.append(pool.pop(k))
                if len(g) == n_wells:
                    groups.append(np.array(g))
                    used += n_wells
        if not groups:
            out[mode] = {"n": 0}
            continue
        mol = np.array(wells.column("molecule_id").to_pylist(), dtype=object)
        conc = _col(wells, "concentration_um").astype(np.float64).copy()
        ctl = is_control.copy()
        for k, g in enumerate(groups):
            mol[g] = f"pseudo-{k}"
            conc[g] = 1.0
            ctl[g] = False
        keep = np.flatnonzero(sel & (ctl | np.isin(np.arange(len(mol)), np.concatenate(groups))))
        tbl = pa.table({
            "batch": wells.column("batch").take(pa.array(keep)),
            "dataset": wells.column("dataset").take(pa.array(keep)),
            "molecule_id": pa.array(mol[keep].tolist(), pa.string()),
            "concentration_um": pa.array(conc[keep], pa.float64()),
            "is_control": pa.array(ctl[keep]),
            "phenomic": wells.column("phenomic").take(pa.array(keep)),
        })
        p = _call(tbl, seed=seed).column("p_value").to_numpy()
        out[mode] = {"n": int(len(p)), **{str(c): float((p < c).mean()) for c in cutoffs}}
    return out


# ---------------------------------------------------------------------------- everything


def screen_statistics(
    dataset, calls: pa.Table | None = None, *, dataset_name: str | None = None,
    cutoffs: Sequence[float] = (0.1, 0.05, 0.01), p_cutoff: float = DEFAULT_CUTOFF,
    soft_positive_fraction: float = 0.005, inactive_rate: float = 0.1, seed: int = 0,
) -> dict[str, Any]:
    """All the statistics above for one dataset (or one ``dataset`` value of it).

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        calls: Activity calls (default ``dataset.calls``; required).
        dataset_name: Restrict to the wells of this ``dataset`` value (default: all wells).
        cutoffs: Activity cutoffs for :func:`activity_fractions`.
        p_cutoff: Active = ``p < p_cutoff`` elsewhere.
        soft_positive_fraction, inactive_rate: The trainer's S2L settings
            (:func:`soft_label_pairs`).
        seed: Seed of every random draw.

    Returns:
        ``{"counts", "activity", "replicates", "replicates_all_wells", "distance",
        "soft_labels", "variance", "position"}`` (``replicates_all_wells``: :func:`replicate_consistency`
        with ``max_group=None``).

    Raises:
        ValueError: no calls, or a statistic's own errors.
    """
    calls = _calls_of(dataset, calls)
    wells, x = _wells(dataset)
    sel = _select_dataset(wells, dataset_name)
    is_control = _col(wells, "is_control").astype(bool)
    rows = np.flatnonzero(sel & ~is_control)
    codes, keys = _sample_codes(wells, rows)
    reps = np.bincount(codes, minlength=len(keys))
    counts = {
        "wells": int(sel.sum()),
        "control_wells": int((sel & is_control).sum()),
        "treated_wells": int(len(rows)),
        "samples": int(len(keys)),
        "molecules": int(len({k[0] for k in keys})),
        "batches": int(len(set(_col(wells, "batch")[sel].astype(str).tolist()))),
        "plates": int(len(set(_col(wells, "plate")[sel].astype(str).tolist()))),
        "features": int(x.shape[1]),
        "replicates_median": float(np.median(reps)),
        "single_well_samples": float((reps == 1).mean()),
    }
    kw = dict(dataset_name=dataset_name)
    return {
        "dataset_name": dataset_name,
        "counts": counts,
        "activity": activity_fractions(dataset, calls, cutoffs=cutoffs, **kw),
        "replicates": replicate_consistency(dataset, calls, p_cutoff=p_cutoff, seed=seed, **kw),
        "replicates_all_wells": replicate_consistency(dataset, calls, p_cutoff=p_cutoff, seed=seed,
                                                      max_group=None, **kw),
        "distance": control_distance(dataset, calls, p_cutoff=p_cutoff, **kw),
        "soft_labels": soft_label_pairs(dataset, calls, soft_positive_fraction=soft_positive_fraction,
                                        inactive_rate=inactive_rate, p_cutoff=p_cutoff, seed=seed, **kw),
        "variance": variance_share(dataset, **kw),
        "position": position_effects(dataset, calls, p_cutoff=p_cutoff, seed=seed, **kw),
    }
