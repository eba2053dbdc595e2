"""Pooled retrieval metrics and paired method comparisons with a cluster bootstrap over molecules.

Queries are (molecule, concentration) pairs, so the queries of one molecule are not independent:
a molecule whose phenotype is strong tends to be found at every dose. Intervals that resample
queries one by one are then too narrow. Here every interval comes from a **cluster bootstrap**:
each resample draws molecules with replacement (as many as there are) and keeps all queries of
each drawn molecule; the statistic is the mean over the resampled queries. With one query per
molecule it is the ordinary bootstrap of the queries.

Per-query statistics (:func:`query_stats`; ``rank`` 0-based as
:func:`molphenix.ops.retrieval_ranks` gives it, ``N`` the query's number of candidates, which
may differ between queries, e.g. pooled over cross-validation folds):

============  ======================================  ========================
key           per query                               chance (random ranking)
============  ======================================  ========================
``mrr``       ``1 / (rank + 1)``                      ``H_N / N``
``rank1``     ``rank == 0`` (top-1)                   ``1 / N``
``top1``      ``rank < k``, ``k = max(1, ceil(N/100))``  ``k / N`` (top-1%)
``top5``      top-5% likewise                         ``k / N``
``mean_rank`` ``rank + 1``                            ``(N + 1) / 2``
============  ======================================  ========================

:func:`summarize` gives these metrics of one method with intervals and chance levels;
:func:`paired_compare` the difference and ratio of two methods on the same queries, from the
same molecule resamples for both (so the shared difficulty of a molecule cancels).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "DEFAULT_METRICS",
    "cluster_bootstrap_means",
    "paired_compare",
    "query_stats",
    "summarize",
]

#: The metrics of :func:`summarize` / :func:`paired_compare` for the default fractions.
DEFAULT_METRICS = ("mrr", "rank1", "top1", "top5", "mean_rank")


def _as_ranks(ranks: Any, n_candidates: Any) -> Tuple[np.ndarray, np.ndarray]:
    if hasattr(ranks, "detach"):
        ranks = ranks.detach().cpu().numpy()
    r = np.asarray(ranks)
    if r.ndim != 1:
        raise ValueError(f"ranks: expected a 1-D array, got shape {r.shape}")
    if r.size and r.dtype.kind not in "iu":
        raise TypeError(f"ranks: expected an integer dtype, got {r.dtype}")
    r = r.astype(np.int64)
    n = np.asarray(n_candidates)
    if n.ndim == 0:
        n = np.full(r.shape[0], int(n), dtype=np.int64)
    if n.shape != r.shape:
        raise ValueError(f"n_candidates: expected one value or {r.shape[0]} (one per query), got shape {n.shape}")
    if n.size and n.dtype.kind not in "iu":
        raise TypeError(f"n_candidates: expected integers, got dtype {n.dtype}")
    n = n.astype(np.int64)
    if n.size and n.min() < 1:
        raise ValueError(f"n_candidates: expected values >= 1, got {int(n.min())}")
    if r.size and (r.min() < 0 or np.any(r >= n)):
        bad = int(np.flatnonzero((r < 0) | (r >= n))[0])
        raise ValueError(f"ranks: query {bad} has rank {int(r[bad])} outside [0, {int(n[bad])})")
    return r, n


def _keys_of(fractions: Sequence[float]) -> List[Tuple[str, float]]:
    from molphenix.eval.metrics import _check_fractions, fraction_key

    return [(fraction_key(f), f) for f in _check_fractions(fractions)]


def _harmonic(n: np.ndarray) -> np.ndarray:
    """H_n for an int array (exact cumulative sums up to max n)."""
    if n.size == 0:
        return np.zeros(0)
    h = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max()) + 1, dtype=np.float64))])
    return h[n]


def query_stats(ranks: Any, n_candidates: Any, *, fractions: Sequence[float] = (0.01, 0.05)
                ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Per-query values of every metric, their chance levels and the top-K% ``k`` per query.

    Args:
        ranks: [Q] 0-based ranks.
        n_candidates: N per query ([Q]) or one N for all.
        fractions: top-K% fractions (keys by :func:`molphenix.eval.fraction_key`).

    Returns:
        ``(values, chance, k)``: ``values[metric]`` and ``chance[metric]`` float64 [Q] for
        ``mrr``, ``rank1``, each fraction key and ``mean_rank`` (see the module docstring);
        ``k[key]`` int64 [Q] per fraction key.

    Shapes:
        ranks, n_candidates: [Q]

    Raises:
        ValueError: ranks outside [0, N), N < 1, length mismatch, bad fractions. TypeError:
            non-integer ranks or N.
    """
    from molphenix.ops import k_for_fraction

    r, n = _as_ranks(ranks, n_candidates)
    rf = r.astype(np.float64)
    nf = n.astype(np.float64)
    values: Dict[str, np.ndarray] = {"mrr": 1.0 / (rf + 1.0), "rank1": (r == 0).astype(np.float64)}
    chance: Dict[str, np.ndarray] = {"mrr": _harmonic(n) / nf if n.size else np.zeros(0),
                                     "rank1": 1.0 / nf}
    ks: Dict[str, np.ndarray] = {}
    uniq = np.unique(n)
    for key, f in _keys_of(fractions):
        kmap = {int(u): k_for_fraction(f, int(u)) for u in uniq}
        k = np.asarray([kmap[int(x)] for x in n], dtype=np.int64)
        ks[key] = k
        values[key] = (r < k).astype(np.float64)
        chance[key] = k / nf
    values["mean_rank"] = rf + 1.0
    chance["mean_rank"] = (nf + 1.0) / 2.0
    return values, chance, ks


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(tag.encode())])


def _cluster_codes(clusters: Any, q: int) -> np.ndarray:
    if clusters is None:
        return np.arange(q, dtype=np.int64)
    if hasattr(clusters, "to_pylist"):
        clusters = clusters.to_pylist()
    arr = np.asarray(clusters, dtype=object).ravel()
    if arr.shape[0] != q:
        raise ValueError(f"clusters: expected {q} labels (one per query), got {arr.shape[0]}")
    if any(v is None for v in arr):
        raise ValueError("clusters: a label is missing (None)")
    return np.unique(arr.astype(str), return_inverse=True)[1].ravel().astype(np.int64)


def cluster_bootstrap_means(values: Any, clusters: Any, *, n_bootstrap: int = 2000, seed: int = 0,
                            tag: str = "", chunk: int = 256) -> np.ndarray:
    """Means of per-query values over cluster-bootstrap resamples.

    Each resample draws C clusters uniformly with replacement (C = the number of distinct
    labels; cluster ``c`` is the c-th label in sorted order) and averages the values of all
    queries of the drawn clusters, a cluster drawn twice counting twice. With one query per
    cluster, and the queries in label order, this is exactly the ordinary bootstrap that draws
    query indices ``rng.integers(0, Q, size=(chunk, Q))`` from the same generator.

    Args:
        values: [Q] or [Q, M] per-query values (M statistics resampled together).
        clusters: [Q] cluster labels (e.g. molecule ids); ``None``: every query its own.
        n_bootstrap: Resamples B (>= 1).
        seed, tag: The generator is ``numpy.random.default_rng([seed, crc32(tag)])``.
        chunk: Resamples drawn at once (memory ``chunk * C`` integers).

    Returns:
        float64 [B, M] (or [B] for 1-D ``values``).

    Raises:
        ValueError: no queries, length mismatch, non-finite values, ``n_bootstrap`` < 1.
    """
    v = np.asarray(values, dtype=np.float64)
    one_d = v.ndim == 1
    v = v[:, None] if one_d else v
    if v.ndim != 2:
        raise ValueError(f"values: expected [Q] or [Q, M], got shape {v.shape}")
    q = v.shape[0]
    if q == 0:
        raise ValueError("values: no queries to resample")
    if not np.isfinite(v).all():
        raise ValueError("values: non-finite entries")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap: expected an int >= 1, got {n_bootstrap!r}")
    codes = _cluster_codes(clusters, q)
    n_c = int(codes.max()) + 1
    sums = np.zeros((n_c, v.shape[1]))
    np.add.at(sums, codes, v)
    sizes = np.bincount(codes, minlength=n_c).astype(np.float64)
    rng = _rng(seed, tag)
    out = np.empty((int(n_bootstrap), v.shape[1]))
    for s in range(0, int(n_bootstrap), chunk):
        b = min(chunk, int(n_bootstrap) - s)
        idx = rng.integers(0, n_c, size=(b, n_c))
        flat = (np.arange(b, dtype=np.int64)[:, None] * n_c + idx).ravel()
        w = np.bincount(flat, minlength=b * n_c).reshape(b, n_c).astype(np.float64)  # draws per cluster
        out[s:s + b] = (w @ sums) / (w @ sizes)[:, None]
    return out[:, 0] if one_d else out


def _ci(samples: np.ndarray) -> List[Optional[float]]:
    lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    return [float(lo), float(hi)]


def _subset_mask(active: Any, subset: str, q: int) -> np.ndarray:
    if subset == "all":
        return np.ones(q, dtype=bool)
    if subset != "active":
        raise ValueError(f"subset: expected 'all' or 'active', got {subset!r}")
    if active is None:
        raise ValueError("active: required for subset='active'")
    a = np.asarray(active)
    if a.dtype != bool:
        raise TypeError(f"active: expected bool, got dtype {a.dtype}")
    if a.shape != (q,):
        raise ValueError(f"active: expected {q} entries (one per query), got shape {a.shape}")
    return a


def summarize(ranks: Any, n_candidates: Any, clusters: Any = None, *, active: Any = None,
              subset: str = "all", fractions: Sequence[float] = (0.01, 0.05),
              n_bootstrap: int = 2000, seed: int = 0) -> Dict[str, Any]:
    """One method's metrics on a set of queries, with cluster-bootstrap 95% intervals.

    Args:
        ranks: [Q] 0-based ranks.
        n_candidates: N per query [Q] (or one N).
        clusters: [Q] cluster labels (molecule ids); ``None``: queries resampled one by one.
        active: [Q] bool (needed for ``subset="active"``).
        subset: ``"all"`` or ``"active"`` queries.
        fractions: top-K% fractions.
        n_bootstrap: Resamples (0: no intervals).
        seed: Bootstrap seed.

    Returns:
        ``{"n_queries", "n_clusters", <metric>: value, ..., "ci95": {metric: [lo, hi]},
        "chance": {metric: mean chance level}, "hits": {"rank1", <fraction keys>: counts},
        "hits_chance": {...: expected counts}, "k": {key: [min k, max k]},
        "same_as_rank1": [fraction keys whose k is 1 for every query]}``; metric values are
        ``None`` when there are no queries.

    Shapes:
        ranks, n_candidates, clusters, active: [Q]
    """
    values, chance, ks = query_stats(ranks, n_candidates, fractions=fractions)
    q = values["mrr"].shape[0]
    sel = _subset_mask(active, subset, q)
    codes = _cluster_codes(clusters, q)[sel]
    names = list(values)
    frac_keys = [k for k, _ in _keys_of(fractions)]
    out: Dict[str, Any] = {"n_queries": int(sel.sum()), "n_clusters": int(np.unique(codes).size)}
    if not sel.any():
        out.update({m: None for m in names})
        out.update(ci95={m: None for m in names}, chance={m: None for m in names},
                   hits={m: 0 for m in ["rank1"] + frac_keys}, hits_chance={m: 0.0 for m in ["rank1"] + frac_keys},
                   k={key: None for key in frac_keys}, same_as_rank1=[])
        return out
    mat = np.stack([values[m][sel] for m in names], axis=1)
    for j, m in enumerate(names):
        out[m] = float(mat[:, j].mean())
    if n_bootstrap:
        boots = cluster_bootstrap_means(mat, codes, n_bootstrap=n_bootstrap, seed=seed, tag=f"summary/{subset}")
        out["ci95"] = {m: _ci(boots[:, j]) for j, m in enumerate(names)}
    else:
        out["ci95"] = {m: None for m in names}
    out["chance"] = {m: float(chance[m][sel].mean()) for m in names}
    out["hits"] = {m: int(values[m][sel].sum()) for m in ["rank1"] + frac_keys}
    out["hits_chance"] = {m: float(chance[m][sel].sum()) for m in ["rank1"] + frac_keys}
    out["k"] = {key: [int(ks[key][sel].min()), int(ks[key][sel].max())] for key in frac_keys}
    out["same_as_rank1"] = [key for key in frac_keys if int(ks[key][sel].max()) == 1]
    return out


def _table(t: Mapping[str, Any], name: str) -> Dict[str, np.ndarray]:
    cols = {}
    for c in ("molecule", "concentration", "rank", "n_candidates"):
        if c not in t:
            raise ValueError(f"{name}: missing column {c!r} (expected molecule, concentration, rank, "
                             "n_candidates and, for active queries, active)")
    q = len(np.asarray(t["rank"]))
    for c, v in t.items():
        arr = np.asarray(v.to_pylist() if hasattr(v, "to_pylist") else v)
        if arr.ndim == 0:  # one value for every query (e.g. n_candidates)
            arr = np.full(q, arr.item(), dtype=arr.dtype)
        if arr.shape[0] != q:
            raise ValueError(f"{name}: column {c!r} has {arr.shape[0]} rows, expected {q}")
        cols[c] = arr
    return cols


def _query_keys(t: Dict[str, np.ndarray], name: str) -> List[str]:
    from molphenix.eval.metrics import concentration_key

    keys = [f"{m}\x00{concentration_key(c)}" for m, c in zip(t["molecule"].astype(str), t["concentration"])]
    if len(set(keys)) != len(keys):
        seen, dup = set(), None
        for k in keys:
            if k in seen:
                dup = k
                break
            seen.add(k)
        m, c = dup.split("\x00")
        raise ValueError(f"{name}: query (molecule {m!r}, concentration {c}) appears twice")
    return keys


def paired_compare(a: Mapping[str, Any], b: Mapping[str, Any], *, subset: str = "all",
                   fractions: Sequence[float] = (0.01, 0.05), metrics: Optional[Sequence[str]] = None,
                   n_bootstrap: int = 2000, seed: int = 0, names: Tuple[str, str] = ("a", "b")) -> Dict[str, Any]:
    """Method A against method B on the same queries: difference and ratio with cluster-bootstrap
    95% intervals (molecules resampled; the same resamples for both methods).

    Args:
        a, b: Per-query tables (mappings of equal-length columns, e.g. a pooled ranks file read
            with :func:`molphenix.eval.read_query_ranks`): ``molecule``, ``concentration``,
            ``rank`` (0-based), ``n_candidates`` and ``active`` (bool; for ``subset="active"``).
            The two must hold the same (molecule, concentration) queries, in any order; a
            column given as one value applies to every query.
        subset: ``"all"`` or ``"active"`` queries (A's activity calls).
        fractions: top-K% fractions.
        metrics: Metrics to compare (default: ``mrr``, ``rank1``, each fraction key,
            ``mean_rank``).
        n_bootstrap: Resamples (>= 1).
        seed: Bootstrap seed.
        names: The two methods' names (recorded).

    Returns:
        ``{"a": name, "b": name, "subset", "n_queries", "n_clusters", "n_bootstrap",
        "metrics": {metric: {"a", "b", "diff", "diff_ci95", "ratio", "ratio_ci95",
        "chance"}}}``. ``diff`` is A - B; ``ratio`` is A / B (``None`` when B is 0; an
        interval end is ``None`` when infinite); for ``mean_rank`` lower is better.

    Raises:
        ValueError: missing columns, duplicate queries, queries that differ between the tables
            (one is named), no queries in the subset, unknown metric.
    """
    ta, tb = _table(a, names[0]), _table(b, names[1])
    ka, kb = _query_keys(ta, names[0]), _query_keys(tb, names[1])
    pos_b = {k: i for i, k in enumerate(kb)}
    missing = [k for k in ka if k not in pos_b]
    if missing or len(ka) != len(kb):
        extra = [k for k in kb if k not in set(ka)]
        k = (missing or extra)[0]
        m, c = k.split("\x00")
        where = names[1] if missing else names[0]
        raise ValueError(f"{names[1]}: the two methods' queries differ ({len(ka)} vs {len(kb)}); "
                         f"e.g. (molecule {m!r}, concentration {c}) is missing in {where}")
    order_b = np.asarray([pos_b[k] for k in ka], dtype=np.int64)
    va, ca, _ = query_stats(ta["rank"], ta["n_candidates"], fractions=fractions)
    vb, _, _ = query_stats(np.asarray(tb["rank"])[order_b], np.asarray(tb["n_candidates"])[order_b],
                           fractions=fractions)
    wanted = list(metrics) if metrics is not None else list(va)
    for m in wanted:
        if m not in va:
            raise ValueError(f"metrics: unknown metric {m!r}; expected some of {list(va)}")
    q = len(ka)
    sel = _subset_mask(ta.get("active") if subset == "active" else None, subset, q)
    if not sel.any():
        raise ValueError(f"subset: no {subset} queries to compare")
    codes = _cluster_codes(ta["molecule"].astype(str), q)[sel]
    mat_a = np.stack([va[m][sel] for m in wanted], axis=1)
    mat_b = np.stack([vb[m][sel] for m in wanted], axis=1)
    boots = cluster_bootstrap_means(np.concatenate([mat_a, mat_b], axis=1), codes, n_bootstrap=n_bootstrap,
                                    seed=seed, tag=f"paired/{subset}")
    ba, bb = boots[:, :len(wanted)], boots[:, len(wanted):]
    out_m: Dict[str, Any] = {}
    for j, m in enumerate(wanted):
        ma, mb = float(mat_a[:, j].mean()), float(mat_b[:, j].mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bb[:, j] > 0, ba[:, j] / np.where(bb[:, j] > 0, bb[:, j], 1.0),
                             np.where(ba[:, j] > 0, np.inf, np.nan))
        finite = ratio[~np.isnan(ratio)]
        rci: List[Optional[float]] = [None, None]
        if finite.size:
            lo, hi = np.quantile(finite, [0.025, 0.975], method="inverted_cdf")
            rci = [float(lo) if math.isfinite(lo) else None, float(hi) if math.isfinite(hi) else None]
        out_m[m] = {"a": ma, "b": mb, "diff": ma - mb, "diff_ci95": _ci(ba[:, j] - bb[:, j]),
                    "ratio": ma / mb if mb > 0 else None, "ratio_ci95": rci,
                    "chance": float(ca[m][sel].mean())}
    return {"a": names[0], "b": names[1], "subset": subset, "n_queries": int(sel.sum()),
            "n_clusters": int(np.unique(codes).size), "n_bootstrap": int(n_bootstrap), "metrics": out_m}
