"""Figures of the evaluation report (PNG).

matplotlib is imported lazily, and only its object API with the Agg canvas is used (no
``pyplot``): nothing here touches the caller's backend or global figure state, and it runs
headless. Each function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from molphenix._similarity import ARCTAN_C, SOFT_LABEL_THRESHOLD

__all__ = [
    "plot_embedding_projection",
    "plot_metric_intervals",
    "plot_rank_cdfs",
    "plot_per_concentration",
    "plot_recall_vs_samples",
    "plot_similarity_cdfs",
    "similarity_pair_samples",
]

PathLike = Union[str, "os.PathLike[str]"]
PAIR_KINDS = ("random", "active-active", "inactive-inactive", "active-inactive")


def _figure(ncols: int = 1, size: Tuple[float, float] = (6.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1]), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: PathLike) -> Path:
    from molphenix._atomic import atomic_write

    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _np(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    elif type(x).__module__.split(".")[0] == "cupy":
        x = x.get()
    return np.asarray(x)


def _mask(active: Any, n: int, name: str = "active") -> np.ndarray:
    a = _np(active, name)
    if a.dtype != np.bool_:
        raise TypeError(f"{name}: expected booleans, got dtype {a.dtype}")
    a = a.ravel()
    if a.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries (one per row), got {a.shape[0]}")
    return a


def _matrix(x: Any, name: str) -> np.ndarray:
    a = _np(x, name)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array [n, dim], got shape {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return a


# ---------------------------------------------------------------------------------------------
# recall vs samples seen
# ---------------------------------------------------------------------------------------------


def plot_recall_vs_samples(
    curves: Mapping[str, Sequence[Tuple[float, float]]],
    path: PathLike,
    *,
    ylabel: str = "top-1% recall (active, validation)",
    chance: Optional[float] = None,
    title: Optional[str] = None,
) -> Path:
    """Recall against training samples seen, one line per method.

    Args:
        curves: method -> list of ``(samples_seen, recall)`` points (recall in [0, 1]; ``None``
            recalls are skipped).
        path: PNG to write.
        ylabel: y-axis label (which recall it is).
        chance: draw the chance level as a dashed line.
        title: optional title.

    Returns:
        The path written.

    Raises:
        ValueError: no curves.
    """
    if not curves:
        raise ValueError("curves: expected at least one method")
    fig, (ax,) = _figure()
    for method, pts in curves.items():
        pts = [(float(s), float(r)) for s, r in pts if r is not None]
        if not pts:
            continue
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=str(method))
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("samples seen")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# per-concentration recall
# ---------------------------------------------------------------------------------------------


def plot_per_concentration(
    metrics_by_method: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    *,
    key: str = "top1",
    subset: str = "active",
    title: Optional[str] = None,
) -> Path:
    """Grouped bars of recall per concentration, one bar per method, with 95% intervals.

    Args:
        metrics_by_method: method -> one split's metrics dict (from
            :func:`molphenix.eval.evaluate_embeddings`, i.e. with ``per_concentration``).
        path: PNG to write.
        key: which recall (``"top1"``, ``"top5"``).
        subset: ``"active"`` or ``"all"`` queries.
        title: optional title.

    Returns:
        The path written.

    Raises:
        ValueError: no methods, a metrics dict without ``per_concentration``, bad ``subset``.
    """
    if not metrics_by_method:
        raise ValueError("metrics_by_method: expected at least one method")
    if subset not in ("active", "all"):
        raise ValueError(f"subset: expected 'active' or 'all', got {subset!r}")
    concs = set()
    for method, m in metrics_by_method.items():
        if "per_concentration" not in m:
            raise ValueError(f"metrics_by_method[{method!r}]: no 'per_concentration' entry")
        concs.update(m["per_concentration"])
    concs = sorted(concs, key=float)
    methods = list(metrics_by_method)
    fig, (ax,) = _figure(size=(max(6.0, 1.2 * len(concs) + 2), 4.0))
    width = 0.8 / len(methods)
    x = np.arange(len(concs))
    chance = None
    for i, method in enumerate(methods):
        per = metrics_by_method[method]["per_concentration"]
        vals, lo, hi = [], [], []
        for c in concs:
            g = per.get(c, {}).get(subset, {})
            v = g.get(key)
            vals.append(np.nan if v is None else v)
            ci = (g.get("ci95") or {}).get(key)
            lo.append(0.0 if ci is None or v is None else max(0.0, v - ci[0]))
            hi.append(0.0 if ci is None or v is None else max(0.0, ci[1] - v))
            chance = chance if chance is not None else (g.get("chance") or {}).get(key)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, vals, width, yerr=[lo, hi],
               capsize=2, label=str(method))
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c} µM" for c in concs])
    ax.set_xlabel("concentration")
    pct = key[3:] if key.startswith("top") else key
    ax.set_ylabel(f"top-{pct}% recall ({subset} queries)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# cosine vs arctan-L2 similarity CDFs
# ---------------------------------------------------------------------------------------------


def similarity_pair_samples(
    u: Any,
    active: Any,
    *,
    n_pairs: int = 20000,
    max_rows: int = 2000,
    c: float = ARCTAN_C,
    scale: float = 1.0,
    seed: int = 0,
) -> dict:
    """Cosine and arctan-L2 similarities of sampled pairs of rows, by pair kind.

    Rows are subsampled (at most ``max_rows``, seeded, stratified so both active and inactive
    rows appear when present), all their distinct pairs are scored (cosine, and
    :func:`molphenix.ops.arctan_l2_similarity` of ``u / scale``), and at most ``n_pairs`` pairs
    per kind are kept.

    Args:
        u: [n, E] phenomic embeddings (NOT unit-normalised: arctan-L2 needs the norms).
        active: [n] bool activity of each row.
        n_pairs: pairs kept per kind.
        max_rows: rows scored (bounds the ``max_rows^2`` work).
        c: arctan window width.
        scale: ``u`` is divided by this before the arctan-L2 similarity (the dataset scale).
        seed: sampling seed.

    Returns:
        ``{kind: {"cosine": float64 [m], "arctan_l2": float64 [m]}}`` for kind in
        ``random``, ``active-active``, ``inactive-inactive``, ``active-inactive`` (m may be 0).

    Raises:
        ValueError: bad shapes, fewer than 2 rows, NaN/Inf, zero-norm rows, non-positive scale.
    """
    import torch

    from molphenix import ops

    x = _matrix(u, "u").astype(np.float64)
    n = x.shape[0]
    act = _mask(active, n)
    if n < 2:
        raise ValueError(f"u: expected at least 2 rows, got {n}")
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"u: row {int(np.flatnonzero(norms == 0)[0])} has zero norm; cosine is "
                         "undefined")
    rng = np.random.default_rng(seed)
    if n > max_rows:
        ia, ii = np.flatnonzero(act), np.flatnonzero(~act)
        na = min(len(ia), max(max_rows // 2, max_rows - len(ii)))
        rows = np.concatenate([rng.choice(ia, na, replace=False),
                               rng.choice(ii, max_rows - na, replace=False)])
    else:
        rows = np.arange(n)
    xs, a = x[rows], act[rows]
    unit = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    cos = unit @ unit.T
    arc = ops.arctan_l2_similarity(torch.from_numpy(xs / scale), torch.from_numpy(xs / scale),
                                   c=c).numpy()
    iu, ju = np.triu_indices(len(rows), k=1)
    kinds = {
        "random": np.ones(len(iu), bool),
        "active-active": a[iu] & a[ju],
        "inactive-inactive": ~a[iu] & ~a[ju],
        "active-inactive": a[iu] != a[ju],
    }
    out = {}
    for kind in PAIR_KINDS:
        sel = np.flatnonzero(kinds[kind])
        if len(sel) > n_pairs:
            sel = rng.choice(sel, n_pairs, replace=False)
        out[kind] = {"cosine": cos[iu[sel], ju[sel]], "arctan_l2": arc[iu[sel], ju[sel]]}
    return out


def plot_similarity_cdfs(
    u: Any,
    active: Any,
    path: PathLike,
    *,
    n_pairs: int = 20000,
    max_rows: int = 2000,
    c: float = ARCTAN_C,
    scale: float = 1.0,
    threshold: Optional[float] = SOFT_LABEL_THRESHOLD,
    seed: int = 0,
    title: Optional[str] = None,
) -> Path:
    """Empirical CDFs of cosine (left) and arctan-L2 (right) similarity for random,
    active–active, inactive–inactive and active–inactive pairs of rows of ``u``.

    The arctan-L2 form separates inactive–inactive pairs (near the controls: small distance)
    from active–inactive pairs, which cosine cannot (DESIGN.md section 2); this plot shows it.

    Args:
        u, active, n_pairs, max_rows, c, scale, seed: as :func:`similarity_pair_samples`.
        path: PNG to write.
        threshold: the soft-label threshold, drawn as a dotted line on the arctan panel (None:
            no line).
        title: optional title.

    Returns:
        The path written.

    Shapes:
        u: [n, E], active: [n]
    """
    samples = similarity_pair_samples(u, active, n_pairs=n_pairs, max_rows=max_rows, c=c,
                                      scale=scale, seed=seed)
    fig, axes = _figure(ncols=2, size=(5.0, 4.0))
    styles = {"random": ("black", "-"), "active-active": ("tab:red", "-"),
              "inactive-inactive": ("tab:blue", "-"), "active-inactive": ("tab:purple", "--")}
    for ax, sim, label in ((axes[0], "cosine", "cosine similarity"),
                           (axes[1], "arctan_l2", f"arctan-L2 similarity (c={c:g})")):
        for kind in PAIR_KINDS:
            v = np.sort(samples[kind][sim])
            if v.size == 0:
                continue
            color, ls = styles[kind]
            ax.plot(v, np.arange(1, v.size + 1) / v.size, color=color, ls=ls,
                    label=f"{kind} (n={v.size})")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of pairs ≤ x")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if threshold is not None:
        axes[1].axvline(threshold, color="grey", ls=":", lw=1)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# 2-D projection
# ---------------------------------------------------------------------------------------------


def pca_2d(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components (numpy SVD, centered).

    Returns:
        (coordinates [n, 2], explained-variance fractions [2]).
    """
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    coords = xc @ vt[:k].T
    if k < 2:
        coords = np.concatenate([coords, np.zeros((coords.shape[0], 2 - k))], axis=1)
    var = s ** 2
    frac = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    frac = np.concatenate([frac, np.zeros(2 - len(frac))])
    return coords, frac


def plot_embedding_projection(
    embeddings: Any,
    active: Any,
    path: PathLike,
    *,
    max_points: int = 5000,
    seed: int = 0,
    title: Optional[str] = None,
) -> Path:
    """2-D PCA projection of (molecule) embeddings, coloured by activity.

    Args:
        embeddings: [n, D] embeddings (numpy, torch or cupy).
        active: [n] bool activity.
        path: PNG to write.
        max_points: rows plotted at most (seeded subsample; the PCA uses the same rows).
        seed: subsampling seed.
        title: optional title.

    Returns:
        The path written.

    Raises:
        ValueError / TypeError: bad shapes, NaN/Inf, non-bool ``active``.
    """
    x = _matrix(embeddings, "embeddings").astype(np.float64)
    act = _mask(active, x.shape[0])
    if x.shape[0] > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
        x, act = x[rows], act[rows]
    coords, frac = pca_2d(x)
    fig, (ax,) = _figure(size=(5.5, 4.5))
    ax.scatter(coords[~act, 0], coords[~act, 1], s=6, c="tab:blue", alpha=0.5,
               label=f"inactive (n={int((~act).sum())})", linewidths=0)
    ax.scatter(coords[act, 0], coords[act, 1], s=8, c="tab:red", alpha=0.8,
               label=f"active (n={int(act.sum())})", linewidths=0)
    ax.set_xlabel(f"PC1 ({100 * frac[0]:.1f}% var)")
    ax.set_ylabel(f"PC2 ({100 * frac[1]:.1f}% var)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# pooled metrics with intervals; rank distributions
# ---------------------------------------------------------------------------------------------


def plot_metric_intervals(
    values: Mapping[str, Tuple[float, Optional[float], Optional[float]]],
    path: PathLike,
    *,
    chance: Optional[float] = None,
    xlabel: str = "MRR",
    title: Optional[str] = None,
) -> Path:
    """One metric per method as a point with its 95% interval, against the chance level.

    Args:
        values: method -> ``(value, low, high)`` (``None`` bounds: no bar), drawn top to bottom
            in the mapping's order.
        path: PNG to write.
        chance: draw the chance level as a dashed vertical line.
        xlabel: what the metric is.
        title: optional title.

    Returns:
        The path written.

    Raises:
        ValueError: no methods, or a value that is not finite.
    """
    if not values:
        raise ValueError("values: expected at least one method")
    names = list(values)
    fig, (ax,) = _figure(size=(6.0, 0.45 * len(names) + 1.6))
    for i, name in enumerate(names):
        v, lo, hi = values[name]
        if v is None or not math.isfinite(float(v)):
            raise ValueError(f"values: {name!r} has no finite value ({v!r})")
        y = len(names) - 1 - i
        if lo is not None and hi is not None:
            ax.errorbar([float(v)], [y], xerr=[[float(v) - float(lo)], [float(hi) - float(v)]], fmt="o",
                        color="C0", capsize=3, ms=5)
        else:
            ax.plot([float(v)], [y], "o", color="C0", ms=5)
    if chance is not None:
        ax.axvline(float(chance), color="grey", ls="--", lw=1)
        ax.text(float(chance), 1.0, f" chance {float(chance):.3f}", transform=ax.get_xaxis_transform(),
                ha="left", va="bottom", fontsize=7, color="grey")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(list(reversed(names)), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3, axis="x")
    if title:
        ax.set_title(title, fontsize=10, pad=14)
    return _save(fig, path)


def plot_rank_cdfs(
    ranks_by_method: Mapping[str, Tuple[Any, Any]],
    path: PathLike,
    *,
    title: Optional[str] = None,
) -> Path:
    """Cumulative distribution of the true candidate's rank, one step line per method, with the
    exact chance curve of a random ranking.

    Args:
        ranks_by_method: method -> ``(ranks, n_candidates)``: 0-based integer ranks [Q] (as
            :func:`molphenix.ops.retrieval_ranks` gives them) and each query's number of
            candidates [Q] (or one int for all).
        path: PNG to write.
        title: optional title.

    Returns:
        The path written. The y value at rank r is the share of queries whose true candidate
        ranks r or better (1-based); chance is the mean over queries of min(r, N) / N.

    Raises:
        ValueError: no methods, an empty or mismatched rank array, or a rank outside [0, N).
    """
    if not ranks_by_method:
        raise ValueError("ranks_by_method: expected at least one method")
    fig, (ax,) = _figure()
    n_ref = None
    for method, (ranks, n_cand) in ranks_by_method.items():
        r = _np(ranks, "ranks").astype(np.int64).ravel()
        n = _np(n_cand, "n_candidates").astype(np.int64).ravel()
        if n.size == 1:
            n = np.full(r.shape, int(n[0]), dtype=np.int64)
        if r.size == 0 or r.shape != n.shape:
            raise ValueError(f"ranks_by_method: {method!r} needs one rank and one candidate count per query, "
                             f"got {r.size} ranks and {n.size} counts")
        if (r < 0).any() or (r >= n).any():
            raise ValueError(f"ranks_by_method: {method!r} has a rank outside [0, n_candidates)")
        xs = np.arange(1, int(n.max()) + 1)
        ys = (r[None, :] < xs[:, None]).mean(axis=1)
        ax.step(xs, ys, where="post", label=str(method), lw=1.2)
        n_ref = n
    xs = np.arange(1, int(n_ref.max()) + 1)
    chance = (np.minimum(xs[:, None], n_ref[None, :]) / n_ref[None, :]).mean(axis=1)
    ax.plot(xs, chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("rank of the true candidate (1 = first)")
    ax.set_ylabel("share of queries ranked this well or better")
    ax.set_ylim(0, 1)
    ax.set_xlim(1, int(n_ref.max()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
