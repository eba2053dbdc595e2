"""Phenomic preprocessing: per-batch control centering, typical-variation normalisation (TVN)
and replicate averaging.

Control centering subtracts, from every well, the mean of the control wells of its own batch
(optionally dividing by their per-dimension standard deviation). TVN then whitens with a PCA
fitted on the centred control wells: ``w = (x - 0) V diag(1 / sqrt(λ + ε·mean(λ)))`` — control
variation becomes isotropic, so a distance measures departure from typical (control) variation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "encode_labels",
    "control_statistics",
    "center_by_controls",
    "TVN",
    "fit_tvn",
    "typical_variation_normalize",
    "average_replicates",
]


def encode_labels(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for a label column.

    Args:
        values: Sequence/array of hashable labels (e.g. batch names) [N].

    Returns:
        (codes int64 [N], sorted unique labels [G]).
    """
    arr = np.asarray(values, dtype=object)
    uniq, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int64), uniq


def control_statistics(
    x: np.ndarray, batch_codes: np.ndarray, is_control: np.ndarray, n_batches: int | None = None,
    *, chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-batch control sums, sums of squares and counts (float64).

    Args:
        x: Embeddings [N, E].
        batch_codes: int [N] batch index per well.
        is_control: bool [N].
        n_batches: Number of batches (default ``max(code) + 1``).
        chunk: Rows processed at a time (bounds memory).

    Returns:
        (sums [G, E], sums of squares [G, E], counts [G]).
    """
    g = int(n_batches if n_batches is not None else batch_codes.max() + 1)
    e = x.shape[1]
    sums = np.zeros((g, e))
    sq = np.zeros((g, e))
    idx = np.flatnonzero(is_control)
    for s in range(0, len(idx), chunk):
        rows = idx[s : s + chunk]
        xc = x[rows].astype(np.float64)
        b = batch_codes[rows]
        _group_add(sums, b, xc)
        _group_add(sq, b, xc * xc)
    counts = np.bincount(batch_codes[idx], minlength=g).astype(np.int64)
    return sums, sq, counts


def _group_add(out: np.ndarray, codes: np.ndarray, values: np.ndarray) -> None:
    """out[codes[i]] += values[i] (fast path via sorting + reduceat)."""
    if len(codes) == 0:
        return
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    out[c[starts]] += np.add.reduceat(values[order], starts, axis=0)


def center_by_controls(
    x: np.ndarray,
    batches,
    is_control: np.ndarray,
    *,
    standardize: bool = False,
    leave_one_out: bool = False,
    eps: float = 1e-6,
    dtype=np.float32,
) -> np.ndarray:
    """Subtract each batch's control mean (and optionally divide by the control std).

    Args:
        x: Embeddings [N, E].
        batches: Batch label per well [N] (strings or ints).
        is_control: bool [N].
        standardize: Also divide by the per-batch, per-dimension control std.
        leave_one_out: Centre each control well on the mean of the *other* controls of its
            batch (so controls are not pulled towards their own mean; used for null
            distributions).
        eps: Floor for the std.
        dtype: Output dtype.

    Returns:
        Centred embeddings [N, E] (new array).

    Raises:
        ValueError: a batch has no control wells (or only one, with ``leave_one_out``).
    """
    x = np.asarray(x)
    is_control = np.asarray(is_control, dtype=bool)
    codes, names = encode_labels(batches)
    sums, sq, counts = control_statistics(x, codes, is_control, len(names))
    need = 2 if leave_one_out else 1
    bad = np.flatnonzero(counts < need)
    if bad.size:
        raise ValueError(
            f"batch {names[bad[0]]!r} has {counts[bad[0]]} control wells; "
            f"at least {need} needed for control centering"
        )
    mean = sums / counts[:, None]
    out = x.astype(np.float64) - mean[codes]
    if leave_one_out:
        c = np.flatnonzero(is_control)
        n = counts[codes[c]][:, None].astype(np.float64)
        # x - (S - x)/(n-1) = (x - mean) * n / (n - 1)
        out[c] *= n / (n - 1)
    if standardize:
        var = np.maximum(sq / counts[:, None] - mean**2, 0.0) * counts[:, None] / np.maximum(counts[:, None] - 1, 1)
        out /= np.sqrt(var + eps)[codes]
    return out.astype(dtype, copy=False)


@dataclass
class TVN:
    """A fitted typical-variation normalisation (PCA whitening on control wells).

    Attributes:
        mean: [E] mean of the fitting controls (≈0 after centring).
        components: [E, k] principal axes (columns).
        scale: [k] 1 / sqrt(λ + ε·mean λ).
    """

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        """Output dimension k."""
        return int(self.scale.shape[0])

    def transform(self, x: np.ndarray, *, dtype=np.float32) -> np.ndarray:
        """Whiten embeddings.

        Args:
            x: [N, E].
            dtype: Output dtype.

        Returns:
            [N, k].
        """
        return (((np.asarray(x, dtype=np.float64) - self.mean) @ self.components) * self.scale).astype(
            dtype, copy=False
        )


def fit_tvn(controls: np.ndarray, *, eps: float = 0.05, n_components: int | None = None) -> TVN:
    """Fit a PCA whitening on (centred) control wells.

    Args:
        controls: Control embeddings [n, E], n >= 2.
        eps: Ridge on the eigenvalues, relative to their mean (regularises directions the
            controls barely sample).
        n_components: Keep the top k components (default ``min(E, n - 1)``).

    Returns:
        The fitted :class:`TVN`.

    Raises:
        ValueError: fewer than 2 control wells.
    """
    c = np.asarray(controls, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        raise ValueError(f"controls: need [n >= 2, E], got shape {c.shape}")
    mean = c.mean(0)
    cov = np.cov(c - mean, rowvar=False).reshape(c.shape[1], c.shape[1])
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1].clip(min=0), vec[:, ::-1]
    k = min(c.shape[1], c.shape[0] - 1) if n_components is None else int(n_components)
    k = max(1, min(k, c.shape[1]))
    ridge = eps * max(float(lam[:k].mean()), 1e-12)
    return TVN(mean=mean, components=vec[:, :k].copy(), scale=1.0 / np.sqrt(lam[:k] + ridge))


def typical_variation_normalize(
    x: np.ndarray,
    batches,
    is_control: np.ndarray,
    *,
    whiten: bool = True,
    eps: float = 0.05,
    n_components: int | None = None,
) -> tuple[np.ndarray, TVN | None]:
    """Per-batch control centring followed by optional PCA whitening fitted on the controls.

    Args:
        x: Embeddings [N, E].
        batches: Batch label per well [N].
        is_control: bool [N].
        whiten: Apply TVN whitening after centring.
        eps: Eigenvalue ridge (see :func:`fit_tvn`).
        n_components: Components kept (default all that the controls support).

    Returns:
        (normalised embeddings [N, k] float32 (k = E without whitening), the fitted TVN or
        None).

    Raises:
        ValueError: a batch without controls; fewer than 2 controls in total.
    """
    centred = center_by_controls(x, batches, is_control)
    if not whiten:
        return centred, None
    tvn = fit_tvn(centred[np.asarray(is_control, bool)], eps=eps, n_components=n_components)
    return tvn.transform(centred), tvn


def average_replicates(x: np.ndarray, keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average embeddings over wells that share a key (e.g. (molecule, concentration)).

    Args:
        x: Embeddings [N, E].
        keys: Group key per well [N] (hashable values, or tuples via a structured array).

    Returns:
        (unique keys [G] (sorted), means [G, E] float32, counts [G]).
    """
    x = np.asarray(x)
    codes, uniq = encode_labels(keys)
    sums = np.zeros((len(uniq), x.shape[1]))
    _group_add(sums, codes, x.astype(np.float64))
    counts = np.bincount(codes, minlength=len(uniq))
    return uniq, (sums / counts[:, None]).astype(np.float32), counts
