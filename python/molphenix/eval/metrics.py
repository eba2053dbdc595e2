"""Zero-shot retrieval metrics on embeddings (model-agnostic; DESIGN.md sections 2 and 5).

A query is a phenomic embedding (replicate-averaged per (molecule, concentration)); its true
candidate is the candidate with the same (molecule, concentration) (``match="pair"``) or the same
molecule (``match="molecule"``; the candidates are then one row per molecule). Ranks come from
:func:`molphenix.ops.retrieval_ranks` (ties count against the query, never a ``Q x N`` matrix);
top-K% hits use the exact ``k = max(1, ceil(f N))`` of :func:`molphenix.ops.k_for_fraction`.

Result layout of one split (recalls are fractions in [0, 1]; ``None`` where undefined, e.g. no
active queries, so the JSON never holds NaN)::

    {"n_candidates": N, "match": "pair",
     "all":    {"top1": x, "top5": y, "n_queries": n,
                "ci95": {"top1": [lo, hi], "top5": [lo, hi]},
                "chance": {"top1": k1 / N, "top5": k5 / N},
                "mean_rank": r, "mrr": m},
     "active": {...same...},
     "per_concentration": {"0.25": {"all": {...}, "active": {...}}, ...}}

``top1`` / ``top5`` are top-1% / top-5% recall (the key of a fraction f is ``"top" + 100 f``:
0.01 -> ``top1``, 0.005 -> ``top0.5``).

Beside those keys, for candidate sets small enough that a percentage misleads (on 22 candidates
top-1% is k = 1, the true candidate first), every split and group also carries::

    split:  "k": {"top1": k1, "top5": k5}          candidates counted as a hit per fraction
            "same_as_rank1": ["top1", ...]          fractions whose k is 1 (top-K% = top-1)
    group:  "rank1": fraction ranked first (top-1, whatever N), "ci95_rank1": [lo, hi]
            "hits": {"rank1": c, "top1": c1, "top5": c5}          query counts (not fractions)
            "hits_chance": {"rank1": n / N, "top1": n k1 / N, ...}  expected counts at random
            "chance_rank1": 1 / N, "chance_mrr": H_N / N, "chance_mean_rank": (N + 1) / 2

(chance = a uniformly random ranking of the N candidates; H_N the N-th harmonic number).
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MATCHES",
    "QueryRanks",
    "average_queries",
    "chance_mrr",
    "concentration_key",
    "evaluate_embeddings",
    "fraction_key",
    "metrics_from_ranks",
    "query_targets",
]

MATCHES = ("pair", "molecule")


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------


def fraction_key(fraction: float) -> str:
    """Metric key of a top-K% fraction: ``0.01 -> "top1"``, ``0.05 -> "top5"``, ``0.005 -> "top0.5"``.

    Computed from the exact decimal value (0.07 gives ``top7``, never ``top7.000000000000001``).
    """
    pct = Fraction(repr(float(fraction))) * 100
    if pct.denominator == 1:
        return f"top{pct.numerator}"
    return f"top{float(pct):g}"


def concentration_key(conc: float) -> str:
    """The ``per_concentration`` key of a concentration in µM: ``repr`` of the value rounded to 6
    significant digits (``0.25 -> "0.25"``, ``10 -> "10.0"``, float32 ``0.1 -> "0.1"``).

    Two concentrations with the same key are the same dose (this is also how ``match="pair"``
    compares query and candidate concentrations).
    """
    v = float(conc)
    if not math.isfinite(v):
        raise ValueError(f"concentration: expected a finite number, got {v}")
    return repr(float(f"{v:.6g}"))


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _as_str_list(values: Any, name: str, n: int) -> List[str]:
    if values is None:
        raise ValueError(f"{name}: required")
    if hasattr(values, "to_pylist"):  # pyarrow Array / ChunkedArray
        values = values.to_pylist()
    out = [None if v is None else str(v) for v in (np.asarray(values, dtype=object).ravel()
                                                    if not isinstance(values, list) else values)]
    if len(out) != n:
        raise ValueError(f"{name}: expected {n} entries (one per row), got {len(out)}")
    if any(v is None for v in out):
        raise ValueError(f"{name}: entry {out.index(None)} is missing (None)")
    return out


def _as_float_vector(values: Any, name: str, n: int) -> np.ndarray:
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        values = values.to_numpy(zero_copy_only=False) if _is_arrow(values) else values.to_numpy()
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).ravel()
    if arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries (one per row), got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: entry {int(np.flatnonzero(~np.isfinite(arr))[0])} is not finite")
    return arr


def _as_bool_vector(values: Any, name: str, n: int) -> np.ndarray:
    if _is_arrow(values):
        values = values.to_numpy(zero_copy_only=False)
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype != np.bool_:
        if arr.dtype.kind in "iu" and arr.size and set(np.unique(arr).tolist()) <= {0, 1}:
            arr = arr.astype(bool)
        elif arr.dtype.kind in "iu" and arr.size == 0:
            arr = arr.astype(bool)
        else:
            raise TypeError(f"{name}: expected booleans, got dtype {arr.dtype}")
    arr = arr.ravel()
    if arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries (one per row), got {arr.shape[0]}")
    return arr


def _is_arrow(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "pyarrow"


def _rows(x: Any, name: str) -> Tuple[int, int]:
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-D array [rows, dim], got shape {shape}")
    return int(shape[0]), int(shape[1])


def _check_match(match: Any) -> str:
    if match not in MATCHES:
        raise ValueError(f"match: expected one of {MATCHES}, got {match!r}")
    return match


def _check_fractions(fractions: Any) -> Tuple[float, ...]:
    if isinstance(fractions, (int, float)):
        fractions = (fractions,)
    fr = tuple(float(f) for f in fractions)
    if not fr:
        raise ValueError("fractions: expected at least one fraction")
    for f in fr:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"fractions: expected values in (0, 1], got {f}")
    keys = [fraction_key(f) for f in fr]
    if len(set(keys)) != len(keys):
        raise ValueError(f"fractions: duplicate entries {fr}")
    return fr


# ---------------------------------------------------------------------------------------------
# targets and ranks
# ---------------------------------------------------------------------------------------------


def query_targets(
    query_molecule: Sequence[str],
    query_conc: Any,
    cand_molecule: Sequence[str],
    cand_conc: Any = None,
    *,
    match: str = "pair",
) -> np.ndarray:
    """Index of each query's true candidate.

    Args:
        query_molecule: [Q] molecule ids of the queries.
        query_conc: [Q] concentrations (µM) of the queries (unused for ``match="molecule"``;
            may then be None).
        cand_molecule: [N] molecule ids of the candidates.
        cand_conc: [N] candidate concentrations (µM); required for ``match="pair"``, ignored for
            ``match="molecule"``.
        match: ``"pair"``: the candidate with the same (molecule, concentration) (concentrations
            compared by :func:`concentration_key`); ``"molecule"``: the candidate with the same
            molecule (the candidates must then be one row per molecule).

    Returns:
        int64 [Q] candidate indices.

    Raises:
        ValueError: two candidates share a key (the target would be ambiguous), a query has no
            candidate with its key (the message names it), length mismatches, unknown ``match``.
    """
    match = _check_match(match)
    nq = len(query_molecule) if not hasattr(query_molecule, "shape") else int(query_molecule.shape[0])
    qm = _as_str_list(query_molecule, "query_molecule", nq)
    nc = len(cand_molecule) if not hasattr(cand_molecule, "shape") else int(cand_molecule.shape[0])
    cm = _as_str_list(cand_molecule, "cand_molecule", nc)
    if match == "pair":
        if cand_conc is None:
            raise ValueError("cand_conc: required for match='pair'")
        if query_conc is None:
            raise ValueError("query_conc: required for match='pair'")
        qc = [concentration_key(c) for c in _as_float_vector(query_conc, "query_conc", nq)]
        cc = [concentration_key(c) for c in _as_float_vector(cand_conc, "cand_conc", nc)]
        qkeys: List[Any] = list(zip(qm, qc))
        ckeys: List[Any] = list(zip(cm, cc))
    else:
        qkeys, ckeys = qm, cm
    lookup: Dict[Any, int] = {}
    for j, key in enumerate(ckeys):
        if key in lookup:
            what = "(molecule, concentration)" if match == "pair" else "molecule"
            raise ValueError(
                f"cand_molecule: candidates {lookup[key]} and {j} share the {what} {key!r}; "
                f"match={match!r} needs one candidate per {what}")
        lookup[key] = j
    targets = np.empty(nq, dtype=np.int64)
    for i, key in enumerate(qkeys):
        j = lookup.get(key)
        if j is None:
            what = "(molecule, concentration)" if match == "pair" else "molecule"
            raise ValueError(f"query_molecule: query {i} {what} {key!r} has no candidate "
                             f"(match={match!r})")
        targets[i] = j
    return targets


def _ranks(query_emb, cand_emb, targets, metric, backend) -> np.ndarray:
    from molphenix import ops

    ranks = ops.retrieval_ranks(query_emb, cand_emb, targets_like(targets, query_emb),
                                metric=metric, backend=backend)
    if hasattr(ranks, "detach"):
        ranks = ranks.detach().cpu().numpy()
    elif not isinstance(ranks, np.ndarray):  # cupy
        ranks = ranks.get()
    return np.asarray(ranks, dtype=np.int64)


def _process_group(distributed: Any) -> Tuple[Any, bool]:
    """(group, whether to shard) for ``evaluate_embeddings(distributed=...)``: False / None: one
    process; True: the default process group; else the given group. A group of one rank, or
    no initialised group, means one process."""
    if distributed is None or distributed is False:
        return None, False
    from molphenix.distributed import get_world_size, is_initialized

    group = None if distributed is True else distributed
    if not is_initialized() or get_world_size(group) == 1:
        return None, False
    return group, True


def _sharded_ranks(query_emb, cand_emb, n_cand, targets, metric, backend, group) -> np.ndarray:
    from molphenix.distributed.retrieval import shard_range, sharded_ranks

    start, stop = shard_range(n_cand, group=group)
    rows = _rows(cand_emb, "cand_emb")[0]
    if rows == n_cand:
        shard = cand_emb[start:stop]
    elif rows == stop - start:
        shard = cand_emb
    else:
        raise ValueError(f"cand_emb: expected all {n_cand} candidate rows or this rank's block "
                         f"[{start}, {stop}) of them, got {rows} rows")
    ranks = sharded_ranks(query_emb, shard, targets_like(targets, query_emb), metric=metric,
                          backend=backend, group=group)
    if hasattr(ranks, "detach"):
        ranks = ranks.detach().cpu().numpy()
    elif not isinstance(ranks, np.ndarray):  # cupy
        ranks = ranks.get()
    return np.asarray(ranks, dtype=np.int64)


def targets_like(targets: np.ndarray, like: Any) -> Any:
    """``targets`` as the array kind / device of ``like`` (ops want both on one device)."""
    import torch

    if isinstance(like, torch.Tensor):
        return torch.as_tensor(targets, dtype=torch.int64, device=like.device)
    if isinstance(like, np.ndarray):
        return targets
    if type(like).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.asarray(targets)
    return targets


# ---------------------------------------------------------------------------------------------
# metrics from ranks
# ---------------------------------------------------------------------------------------------


def _bootstrap_ci(ranks: np.ndarray, ks: List[int], n_bootstrap: int, seed: int,
                  tag: str) -> np.ndarray:
    """Percentile 95% intervals of top-k recall for each k over ``n_bootstrap`` resamples of the
    queries with replacement. Returns [F, 2].

    Resampling n queries with replacement only matters through how many draws land in each rank
    bin ``[0, k_(1)), [k_(1), k_(2)), ..., [k_(F), N)`` (the ks sorted): those counts are
    multinomial(n, bin frequencies), exactly. Drawing them directly gives the same bootstrap
    distribution as drawing n query indices per resample, in O(n_bootstrap * F) instead of
    O(n_bootstrap * n).
    """
    n = ranks.shape[0]
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(tag.encode())])
    order = np.argsort(ks, kind="stable")
    ks_sorted = np.asarray(ks, dtype=np.int64)[order]
    bins = np.searchsorted(ks_sorted, ranks, side="right")  # bin b: k_(b-1) <= rank < k_(b)
    freq = np.bincount(bins, minlength=len(ks) + 1) / n
    draws = rng.multinomial(n, freq, size=n_bootstrap)  # [B, F + 1]
    hits_sorted = np.cumsum(draws[:, :-1], axis=1) / n  # recall at k_(1..F)
    means = np.empty_like(hits_sorted)
    means[:, order] = hits_sorted
    return np.percentile(means, [2.5, 97.5], axis=0).T


def chance_mrr(n_candidates: int) -> float:
    """Expected reciprocal rank of a uniformly random ranking of N candidates: H_N / N."""
    n = int(n_candidates)
    return float(np.sum(1.0 / np.arange(1, n + 1, dtype=np.float64)) / n)


def _group_metrics(ranks: np.ndarray, n_candidates: int, fractions: Tuple[float, ...],
                   ks: List[int], n_bootstrap: int, seed: int, tag: str) -> Dict[str, Any]:
    keys = [fraction_key(f) for f in fractions]
    n = int(ranks.shape[0])
    out: Dict[str, Any] = {}
    chance = {key: k / n_candidates for key, k in zip(keys, ks)}
    # the counts and the metrics that stay meaningful on few candidates (beside the keys above)
    more: Dict[str, Any] = {
        "hits_chance": {"rank1": n / n_candidates, **{key: n * k / n_candidates for key, k in zip(keys, ks)}},
        "chance_rank1": 1.0 / n_candidates,
        "chance_mrr": chance_mrr(n_candidates),
        "chance_mean_rank": (n_candidates + 1) / 2.0,
    }
    if n == 0:
        for key in keys:
            out[key] = None
        out["n_queries"] = 0
        out["ci95"] = {key: None for key in keys}
        out["chance"] = chance
        out["mean_rank"] = None
        out["mrr"] = None
        out.update(rank1=None, ci95_rank1=None, hits={"rank1": 0, **{key: 0 for key in keys}}, **more)
        return out
    hits = ranks[:, None] < np.asarray(ks, dtype=np.int64)[None, :]  # [n, F]
    rec = hits.mean(axis=0)
    for key, r in zip(keys, rec):
        out[key] = float(r)
    out["n_queries"] = n
    if n_bootstrap > 0:
        ci = _bootstrap_ci(ranks, ks, n_bootstrap, seed, tag)
        out["ci95"] = {key: [float(lo), float(hi)] for key, (lo, hi) in zip(keys, ci)}
        # top-1: the same interval as a fraction whose k is 1, else its own stream (the
        # intervals above stay those of a run without this key)
        ci1 = ci[ks.index(1)] if 1 in ks else _bootstrap_ci(ranks, [1], n_bootstrap, seed, tag + "/rank1")[0]
        ci_rank1 = [float(ci1[0]), float(ci1[1])]
    else:
        out["ci95"] = {key: None for key in keys}
        ci_rank1 = None
    out["chance"] = chance
    out["mean_rank"] = float(np.mean(ranks.astype(np.float64) + 1.0))
    out["mrr"] = float(np.mean(1.0 / (ranks.astype(np.float64) + 1.0)))
    out["rank1"] = float(np.mean(ranks == 0))
    out["ci95_rank1"] = ci_rank1
    out["hits"] = {"rank1": int(np.sum(ranks == 0)), **{key: int(c) for key, c in zip(keys, hits.sum(axis=0))}}
    out.update(more)
    return out


def metrics_from_ranks(
    ranks: Any,
    n_candidates: int,
    query_conc: Any,
    query_active: Any,
    *,
    fractions: Sequence[float] = (0.01, 0.05),
    n_bootstrap: int = 1000,
    seed: int = 0,
    match: Optional[str] = None,
) -> Dict[str, Any]:
    """The metrics of one split from precomputed ranks (e.g. ranks all-reduced over shards).

    Args:
        ranks: [Q] int ranks, 0 = best, as :func:`molphenix.ops.retrieval_ranks` returns them.
        n_candidates: N, the number of candidates the ranks were computed against.
        query_conc: [Q] query concentrations (µM); the ``per_concentration`` keys are
            :func:`concentration_key` of these.
        query_active: [Q] bool activity calls of the queries.
        fractions: top-K% fractions (default top-1% and top-5%; keys by :func:`fraction_key`).
        n_bootstrap: bootstrap resamples of the queries for the 95% percentile intervals
            (0 skips them: ``ci95`` values are then None).
        seed: bootstrap seed; the same seed gives the same intervals.
        match: recorded in the result under ``"match"`` when given.

    Returns:
        The split dict of the module docstring. ``mean_rank`` is the mean 1-based rank
        (``rank + 1``; 1 = the true candidate first) and ``mrr`` the mean of ``1 / (rank + 1)``;
        ``chance`` is ``k / N`` per fraction, the expected recall of a random ranking; the
        counts, ``rank1`` and the further chance levels are the module docstring's.

    Shapes:
        ranks, query_conc, query_active: [Q]

    Raises:
        TypeError: non-integer ranks. ValueError: ranks outside [0, N), length mismatches, bad
            fractions / n_bootstrap.
    """
    from molphenix.ops import k_for_fraction

    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)):
        raise TypeError(f"n_candidates: expected an int, got {type(n_candidates).__name__}")
    n_candidates = int(n_candidates)
    if n_candidates < 1:
        raise ValueError(f"n_candidates: expected >= 1, got {n_candidates}")
    if hasattr(ranks, "detach"):
        ranks = ranks.detach().cpu().numpy()
    r = np.asarray(ranks)
    if r.dtype.kind not in "iu":
        raise TypeError(f"ranks: expected an integer dtype, got {r.dtype}")
    if r.ndim != 1:
        raise ValueError(f"ranks: expected a 1-D array, got shape {r.shape}")
    r = r.astype(np.int64)
    nq = r.shape[0]
    if nq and (r.min() < 0 or r.max() >= n_candidates):
        raise ValueError(f"ranks: expected values in [0, {n_candidates}), got min {r.min()}, "
                         f"max {r.max()}")
    conc = _as_float_vector(query_conc, "query_conc", nq)
    active = _as_bool_vector(query_active, "query_active", nq)
    fr = _check_fractions(fractions)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected an int >= 0, got {n_bootstrap!r}")
    ks = [k_for_fraction(f, n_candidates) for f in fr]
    args = (n_candidates, fr, ks, int(n_bootstrap), seed)
    out: Dict[str, Any] = {"n_candidates": n_candidates}
    if match is not None:
        out["match"] = _check_match(match)
    out["k"] = {fraction_key(f): int(k) for f, k in zip(fr, ks)}
    out["same_as_rank1"] = [fraction_key(f) for f, k in zip(fr, ks) if k == 1]
    out["all"] = _group_metrics(r, *args, tag="all")
    out["active"] = _group_metrics(r[active], *args, tag="active")
    uconc, inv = np.unique(conc, return_inverse=True)
    ckeys = np.array([concentration_key(c) for c in uconc], dtype=object)[inv.ravel()]
    per: Dict[str, Any] = {}
    for key in sorted(set(ckeys.tolist()), key=float):
        sel = ckeys == key
        per[key] = {
            "all": _group_metrics(r[sel], *args, tag=f"{key}/all"),
            "active": _group_metrics(r[sel & active], *args, tag=f"{key}/active"),
        }
    out["per_concentration"] = per
    return out


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------


class QueryRanks(dict):
    """Per-query ranks: a dict of equal-length numpy columns ``molecule`` (object str),
    ``concentration`` (float64, µM), ``active`` (bool), ``target`` (int64 candidate index) and
    ``rank`` (int64, 0-based as :func:`molphenix.ops.retrieval_ranks`: 0 = the true candidate
    first). Write it with :func:`molphenix.eval.write_query_ranks`."""

    def __len__(self) -> int:  # number of queries, not of columns
        return int(self["rank"].shape[0])


def evaluate_embeddings(
    query_emb: Any,
    query_molecule: Sequence[str],
    query_conc: Any,
    query_active: Any,
    cand_emb: Any,
    cand_molecule: Sequence[str],
    cand_conc: Any = None,
    *,
    match: str = "pair",
    fractions: Sequence[float] = (0.01, 0.05),
    n_bootstrap: int = 1000,
    seed: int = 0,
    metric: str = "cosine",
    backend: str = "auto",
    return_ranks: bool = False,
    distributed: Any = False,
) -> Any:
    """Zero-shot retrieval metrics of phenomic queries against molecule candidates.

    Query i's true candidate is the candidate with the same (molecule, concentration) under
    ``match="pair"`` (the candidates are every (molecule, concentration) of the split), or the
    one with the same molecule under ``match="molecule"`` (the caller then passes ONE candidate
    row per molecule, e.g. embedded without concentration or at a reference dose; ``cand_conc``
    is ignored and may be None). Ranks come from :func:`molphenix.ops.retrieval_ranks` (ties
    count against the query; candidates are streamed, never a ``Q x N`` matrix).

    Args:
        query_emb: [Q, D] query embeddings (numpy, torch CPU/CUDA or cupy), usually
            replicate-averaged phenomic embeddings (:func:`average_queries`) through the model.
        query_molecule: [Q] molecule ids (any sequence of str; pyarrow arrays accepted).
        query_conc: [Q] concentrations in µM.
        query_active: [Q] bool activity calls.
        cand_emb: [N, D] candidate embeddings, same array kind, dtype and device as the queries.
        cand_molecule: [N] candidate molecule ids.
        cand_conc: [N] candidate concentrations in µM (``match="pair"``).
        match: ``"pair"`` or ``"molecule"``.
        fractions: top-K% fractions; keys ``"top1"``, ``"top5"`` for the default (0.01, 0.05).
        n_bootstrap: resamples of the queries for the 95% percentile intervals (0: no intervals).
        seed: bootstrap seed (deterministic per seed).
        metric: ``"cosine"`` | ``"dot"`` | ``"arctan_l2"`` (as the ops).
        backend: ops backend (``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"reference"``).
        return_ranks: also return the per-query :class:`QueryRanks`.
        distributed: ``False`` (default): one process. ``True`` (the default process group) or
            a ``torch.distributed`` process group: the candidates are sharded across its ranks
            (contiguous blocks, :func:`molphenix.distributed.shard_range`) and ranked with
            :func:`molphenix.distributed.sharded_ranks`; every rank passes the same queries and
            metadata (``cand_molecule`` / ``cand_conc``: all N candidates) and ``cand_emb`` as
            all N rows or only its own block, and every rank gets the same result, equal to one
            process's. Without an initialised group (or with one rank) it is one process.

    Returns:
        The split dict (layout in the module docstring; see :func:`metrics_from_ranks`), or
        ``(metrics, QueryRanks)`` when ``return_ranks``.

    Shapes:
        query_emb: [Q, D], query_molecule / query_conc / query_active: [Q],
        cand_emb: [N, D], cand_molecule / cand_conc: [N]

    Raises:
        ValueError: shape or length mismatches, no candidates, a query without a true candidate,
            duplicate candidate keys, NaN/Inf embeddings, zero-norm rows under cosine, unknown
            ``match`` / ``metric`` / ``backend``. TypeError: non-float embeddings, non-bool
            ``query_active``.
    """
    match = _check_match(match)
    group, sharded = _process_group(distributed)
    nq, dq = _rows(query_emb, "query_emb")
    nc, dc = _rows(cand_emb, "cand_emb")
    if sharded:  # cand_emb may be this rank's block: the metadata give N
        nc = len(cand_molecule) if not hasattr(cand_molecule, "shape") else int(cand_molecule.shape[0])
    if dq != dc:
        raise ValueError(f"cand_emb: expected {dq} columns to match query_emb, got {dc}")
    if nc == 0:
        raise ValueError("cand_emb: the candidate set is empty (0 rows)")
    qm = _as_str_list(query_molecule, "query_molecule", nq)
    qc = _as_float_vector(query_conc, "query_conc", nq)
    qa = _as_bool_vector(query_active, "query_active", nq)
    cm = _as_str_list(cand_molecule, "cand_molecule", nc)
    targets = query_targets(qm, qc, cm, cand_conc if match == "pair" else None, match=match)
    if sharded:
        ranks = _sharded_ranks(query_emb, cand_emb, nc, targets, metric, backend, group)
    else:
        ranks = _ranks(query_emb, cand_emb, targets, metric, backend)
    metrics = metrics_from_ranks(ranks, nc, qc, qa, fractions=fractions, n_bootstrap=n_bootstrap,
                                 seed=seed, match=match)
    if not return_ranks:
        return metrics
    table = QueryRanks(molecule=np.asarray(qm, dtype=object), concentration=qc, active=qa,
                       target=targets, rank=ranks)
    return metrics, table


# ---------------------------------------------------------------------------------------------
# queries from wells
# ---------------------------------------------------------------------------------------------


def average_queries(
    x: Any,
    molecule: Sequence[str],
    concentration: Any,
    active: Any = None,
) -> Dict[str, np.ndarray]:
    """Replicate-average wells per (molecule, concentration) into retrieval queries.

    Args:
        x: [n, E] well embeddings (numpy or torch; averaged in float64).
        molecule: [n] molecule ids (no None: drop control wells first).
        concentration: [n] concentrations (µM); wells are grouped by :func:`concentration_key`.
        active: optional [n] bool per-well activity; a group is active when any of its wells is
            (calls are per (molecule, concentration), so they normally agree).

    Returns:
        dict with ``x`` float32 [G, E] (the means), ``molecule`` object [G], ``concentration``
        float64 [G] (the first well's value of the group), ``n_wells`` int64 [G] and, when
        ``active`` is given, ``active`` bool [G]. Groups are sorted by (molecule, concentration).

    Raises:
        ValueError: length mismatches, missing molecule ids, non-finite values.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    n, _ = _rows(arr, "x")
    mol = _as_str_list(molecule, "molecule", n)
    conc = _as_float_vector(concentration, "concentration", n)
    ckey = np.array([float(concentration_key(c)) for c in conc])
    _, mol_codes = np.unique(np.asarray(mol, dtype=object).astype(str), return_inverse=True)
    conc_uniq, conc_codes = np.unique(ckey, return_inverse=True)
    pair = mol_codes.astype(np.int64).ravel() * len(conc_uniq) + conc_codes.astype(np.int64).ravel()
    groups, first, codes = np.unique(pair, return_index=True, return_inverse=True)
    codes = codes.ravel()
    g = len(groups)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=g).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if g else np.zeros(0, np.int64)
    sums = (np.add.reduceat(arr[order].astype(np.float64), starts, axis=0) if g
            else np.zeros((0, arr.shape[1])))
    out = {
        "x": (sums / counts[:, None]).astype(np.float32),
        "molecule": np.asarray([mol[i] for i in first], dtype=object),
        "concentration": conc[first],
        "n_wells": counts,
    }
    if active is not None:
        act = _as_bool_vector(active, "active", n)
        out["active"] = np.bincount(codes, weights=act.astype(np.float64), minlength=g) > 0
    return out
