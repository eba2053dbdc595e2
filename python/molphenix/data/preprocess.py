"""Phenomic preprocessing: per-batch control centering, typical-variation normalisation (TVN)
and replicate averaging.

Control centering subtracts, from every well, the mean of the control wells of its own batch
(optionally dividing by their per-dimension standard deviation). TVN then whitens with a PCA
fitted on the centered control wells: ``w = (x - 0) V diag(1 / sqrt(λ + ε·mean(λ)))`` — control
variation becomes isotropic, so a distance measures departure from typical (control) variation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "encode_labels",
    "control_statistics",
    "ControlMeans",
    "PRECISIONS",
    "NORMALIZE",
    "center_by_controls",
    "normalize_wells",
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


#: Arithmetic of a centering: ``"float64"`` subtracts the float64 control mean from the
#: widened embeddings and rounds once; ``"float32"`` subtracts the control mean rounded to float32
#: from the float32 embeddings (the arithmetic of a training run's inputs: what
#: :class:`~molphenix.data.ReplicateSampler`, a run's evaluation and ``load_run`` use).
PRECISIONS = ("float64", "float32")


@dataclass
class ControlMeans:
    """Per-batch statistics of the control wells: what every control centering subtracts.

    Fit once (:meth:`fit`), then :meth:`center` any rows. Every centering in molphenix
    (:func:`center_by_controls`, :func:`normalize_wells`, the training sampler, activity calling)
    goes through this class.

    Attributes:
        names: Sorted unique batch labels [G] (as str).
        codes: Batch index of every well [N].
        is_control: bool [N].
        sums: float64 [G, E] per-batch sums of the control wells.
        sq: float64 [G, E] per-batch sums of their squares.
        counts: int64 [G] control wells per batch.
    """

    names: np.ndarray
    codes: np.ndarray
    is_control: np.ndarray
    sums: np.ndarray
    sq: np.ndarray
    counts: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, batches, is_control, *, chunk: int = 65536) -> "ControlMeans":
        """Control statistics of the wells ``x`` [N, E] (float64 sums, ``chunk`` rows at a time).

        Args:
            x: Embeddings [N, E].
            batches: Batch label per well [N] (strings or ints).
            is_control: bool [N].
            chunk: Rows summed at a time (bounds memory; the chunking sets the rounding of the sums).

        Raises:
            ValueError: ``batches`` / ``is_control`` without one entry per well.
        """
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x: expected embeddings [N, E], got shape {x.shape}")
        if batches is None or is_control is None:
            raise ValueError("batches: control centering needs the batch label and the control mask of every well")
        batches = np.asarray(batches, dtype=object)
        is_control = np.asarray(is_control, dtype=bool)
        n = x.shape[0]
        if batches.shape != (n,) or is_control.shape != (n,):
            raise ValueError(f"batches / is_control: expected {n} entries (one per well), got "
                             f"{batches.shape[0] if batches.ndim else 0} / "
                             f"{is_control.shape[0] if is_control.ndim else 0}")
        codes, names = encode_labels(batches)
        sums, sq, counts = control_statistics(x, codes, is_control, len(names), chunk=chunk)
        return cls(names=names, codes=codes, is_control=is_control, sums=sums, sq=sq, counts=counts)

    @property
    def mean(self) -> np.ndarray:
        """float64 [G, E] per-batch control means (0 for a batch without controls)."""
        return self.sums / np.maximum(self.counts, 1)[:, None]

    def require(self, rows: np.ndarray | None = None, need: int = 1) -> None:
        """Raise unless every batch of ``rows`` (default: every well) has ``need`` controls.

        Raises:
            ValueError: the first such batch, named.
        """
        present = np.unique(self.codes if rows is None else self.codes[rows])
        bad = present[self.counts[present] < need]
        if bad.size:
            name, got = str(self.names[bad[0]]), int(self.counts[bad[0]])
            if got == 0:
                raise ValueError(f"batch {name!r} has no control wells; cannot center its wells")
            raise ValueError(f"batch {name!r} has {got} control well(s); leave-one-out centering "
                             f"needs at least {need}")

    def center(self, x: np.ndarray, rows: np.ndarray | None = None, *, precision: str = "float64",
               leave_one_out: bool = False, standardize: bool = False, eps: float = 1e-6,
               dtype=np.float32) -> np.ndarray:
        """Subtract each well's batch control mean (optionally divide by the control std).

        Args:
            x: The embeddings the statistics were fitted on [N, E].
            rows: Wells to return (default: all); only these are read and copied.
            precision: ``"float64"`` or ``"float32"`` (see :data:`PRECISIONS`).
            leave_one_out: Center each control well on the mean of the *other* controls of its
                batch (``(x - mean) * n / (n - 1)``).
            standardize: Also divide by the per-batch, per-dimension control std.
            eps: Floor for the std.
            dtype: Output dtype.

        Returns:
            [len(rows), E] (new array).

        Raises:
            ValueError: a batch of ``rows`` without controls (or with one, ``leave_one_out``);
                unknown ``precision``.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self.require(rows, 2 if leave_one_out else 1)
        x = np.asarray(x)
        wide = precision == "float64"
        work = np.float64 if wide else np.float32
        mean = self.mean if wide else self.mean.astype(np.float32)
        codes = self.codes if rows is None else self.codes[rows]
        xr = x if rows is None else x[rows]
        out = xr.astype(work, copy=False) - mean[codes]
        if leave_one_out:
            c = np.flatnonzero(self.is_control if rows is None else self.is_control[rows])
            n = self.counts[codes[c]][:, None].astype(np.float64)
            # x - (S - x)/(n-1) = (x - mean) * n / (n - 1)
            out[c] *= (n / (n - 1)).astype(work, copy=False)
        if standardize:
            cnt = self.counts[:, None]
            var = np.maximum(self.sq / np.maximum(cnt, 1) - self.mean**2, 0.0) * cnt / np.maximum(cnt - 1, 1)
            out /= np.sqrt(var + eps).astype(work, copy=False)[codes]
        return out.astype(dtype, copy=False)


def center_by_controls(
    x: np.ndarray,
    batches,
    is_control: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    standardize: bool = False,
    leave_one_out: bool = False,
    eps: float = 1e-6,
    dtype=np.float32,
    precision: str = "float64",
) -> np.ndarray:
    """Subtract each batch's control mean (and optionally divide by the control std).

    Args:
        x: Embeddings [N, E] (all wells: the controls define the centers).
        batches: Batch label per well [N] (strings or ints).
        is_control: bool [N].
        rows: Wells to return (default: all).
        standardize: Also divide by the per-batch, per-dimension control std.
        leave_one_out: Center each control well on the mean of the *other* controls of its
            batch (so controls are not pulled towards their own mean; used for null
            distributions).
        eps: Floor for the std.
        dtype: Output dtype.
        precision: ``"float64"`` (default) or ``"float32"`` arithmetic (:data:`PRECISIONS`).

    Returns:
        Centered embeddings [len(rows), E] (new array).

    Raises:
        ValueError: a batch of ``rows`` has no control wells (or only one, with
            ``leave_one_out``); shapes disagree.
    """
    x = np.asarray(x)
    cm = ControlMeans.fit(x, batches, is_control)
    return cm.center(x, rows, precision=precision, leave_one_out=leave_one_out,
                     standardize=standardize, eps=eps, dtype=dtype)


#: Phenomic preprocessing of a training run (``TrainConfig.normalize``).
NORMALIZE = ("center", "tvn", "none")


def normalize_wells(
    x: np.ndarray,
    batches,
    is_control,
    rows: np.ndarray | None = None,
    *,
    normalize: str | None = "center",
) -> np.ndarray:
    """The phenomic preprocessing of a training run: control-center (and optionally TVN-whiten).

    1. **Center** every well on the mean of the control wells of its own batch with
       ``precision="float32"`` (float64 sums, float32 means and difference): the arithmetic of
       :class:`~molphenix.data.ReplicateSampler`, so training, evaluation and
       :func:`molphenix.load_run` see bitwise the same inputs.
    2. ``normalize="tvn"``: whiten with a :class:`TVN` fitted on the centered control wells.
       ``"none"`` (or None) returns the embeddings as they are.

    Args:
        x: Raw phenomic embeddings [N, E] (all wells: the controls define the centers).
        batches: Batch label per well [N].
        is_control: bool [N].
        rows: Rows to return (default: all).
        normalize: ``"center"``, ``"tvn"`` or ``"none"`` (:data:`NORMALIZE`; None: ``"none"``).

    Returns:
        float32 [len(rows), E] (TVN: [len(rows), k]).

    Raises:
        ValueError: a batch of the requested rows has no control wells (the batch is named);
            shapes disagree; unknown ``normalize``.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"wells: expected phenomic embeddings [N, E], got shape {x.shape}")
    if normalize not in NORMALIZE and normalize is not None:
        raise ValueError(f"normalize: expected 'center', 'tvn' or 'none', got {normalize!r}")
    rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
    if normalize in ("none", None):
        return np.ascontiguousarray(x[rows], dtype=np.float32)
    cm = ControlMeans.fit(x, batches, is_control)
    out = cm.center(x, rows, precision="float32")
    if normalize == "tvn":
        tvn = fit_tvn(cm.center(x, np.flatnonzero(cm.is_control), precision="float32"))
        out = tvn.transform(out)
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass
class TVN:
    """A fitted typical-variation normalisation (PCA whitening on control wells).

    Attributes:
        mean: [E] mean of the fitting controls (≈0 after centering).
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
    """Fit a PCA whitening on (centered) control wells.

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
    """Per-batch control centering followed by optional PCA whitening fitted on the controls.

    Args:
        x: Embeddings [N, E].
        batches: Batch label per well [N].
        is_control: bool [N].
        whiten: Apply TVN whitening after centering.
        eps: Eigenvalue ridge (see :func:`fit_tvn`).
        n_components: Components kept (default all that the controls support).

    Returns:
        (normalised embeddings [N, k] float32 (k = E without whitening), the fitted TVN or
        None).

    Raises:
        ValueError: a batch without controls; fewer than 2 controls in total.
    """
    centered = center_by_controls(x, batches, is_control)
    if not whiten:
        return centered, None
    tvn = fit_tvn(centered[np.asarray(is_control, bool)], eps=eps, n_components=n_components)
    return tvn.transform(centered), tvn


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
