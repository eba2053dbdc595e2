"""Training sampler over (molecule, concentration) samples with replicate averaging.

Each epoch, :class:`ReplicateSampler` keeps every *active* sample (p < ``p_cutoff``) and each
*inactive* sample (p >= ``p_cutoff``) with probability ``inactive_rate`` (undersampling), shuffles
them, and for every drawn sample averages a random subset of its replicate wells (size uniform
in [``min_average``, min(``max_average``, n_wells)]; the wells sit in different batches, so the
average mixes batches). Embeddings are control-centered per batch (optionally TVN-whitened) once,
up front.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .._warnings import external_stacklevel
from .activity import DEFAULT_CUTOFF
from .preprocess import normalize_wells

__all__ = ["ReplicateSampler", "SampleBatch", "shard_bounds"]


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``'s slice of a global batch of ``n`` rows.

    Contiguous slices in rank order (so concatenating the ranks' rows gives the global batch);
    when ``world_size`` does not divide ``n`` the first ``n % world_size`` ranks hold one row more.

    Args:
        n: Rows of the global batch.
        rank: This rank (0 <= rank < world_size).
        world_size: Number of ranks (>= 1).

    Returns:
        ``(start, stop)``.

    Raises:
        ValueError: a rank outside ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size, got rank {rank} of {world_size}")
    base, extra = divmod(int(n), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class SampleBatch:
    """One batch of drawn samples.

    Attributes:
        sample_index: int64 [B], index into ``ReplicateSampler.samples``.
        molecule_id: list[str] [B].
        concentration_um: float64 [B].
        phenomic: float32 [B, E] (numpy, or a torch tensor with ``as_torch=True``).
        p_value: float64 [B] (NaN where no call exists).
        active: bool [B].
        n_averaged: int64 [B], number of wells averaged per sample.
        global_size: Rows of the global batch this batch is a slice of (``None``: the batch is
            the whole global batch, as in a single process; see :meth:`ReplicateSampler.iter_epoch`
            with ``shard``).
        offset: Position of this batch's first row in the global batch (0 without a shard).
    """

    sample_index: np.ndarray
    molecule_id: list[str]
    concentration_um: np.ndarray
    phenomic: Any
    p_value: np.ndarray
    active: np.ndarray
    n_averaged: np.ndarray
    global_size: int | None = None
    offset: int = 0

    def __len__(self) -> int:
        return len(self.sample_index)


class ReplicateSampler:
    """Draws (molecule, concentration) samples with inactive undersampling and random replicate
    averaging.

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        calls: Activity calls (default: ``dataset.calls``). Without calls every sample counts as
            active (no undersampling; a warning says so).
        wells: Optional row indices or bool mask [n_wells] restricting the treated wells used
            (e.g. ``splits.mask("train")``); controls are always used for normalisation.
        p_cutoff: Samples with p >= cutoff are inactive.
        inactive_rate: Probability that an inactive sample is drawn in an epoch (1 = no
            undersampling, 0 = actives only).
        min_average, max_average: Replicate-subset size range (``max_average=None``: all).
        batch_size: Samples per batch.
        normalize: ``"center"`` (per-batch control centering), ``"tvn"`` (centering + TVN
            whitening fitted on the controls) or ``None`` (raw embeddings).
        drop_last: Drop the final incomplete batch.
        seed: Seed; epoch e draws its samples from the stream (seed, e) and averages batch b's
            replicates with the stream (seed, e, b), so epochs, and any batch of an epoch
            resumed part-way, are reproducible.
        as_torch: Return ``phenomic`` as a torch tensor.

    Raises:
        ValueError: bad arguments; no treated wells selected.
    """

    def __init__(
        self,
        dataset,
        calls: pa.Table | None = None,
        *,
        wells: np.ndarray | None = None,
        p_cutoff: float = DEFAULT_CUTOFF,
        inactive_rate: float = 0.1,
        min_average: int = 1,
        max_average: int | None = None,
        batch_size: int = 256,
        normalize: str | None = "center",
        drop_last: bool = False,
        seed: int = 0,
        as_torch: bool = False,
    ):
        if not 0 <= inactive_rate <= 1:
            raise ValueError(f"inactive_rate must lie in [0, 1], got {inactive_rate}")
        if min_average < 1 or (max_average is not None and max_average < min_average):
            raise ValueError("need 1 <= min_average <= max_average")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if normalize not in ("center", "tvn", None):
            raise ValueError(f"normalize must be 'center', 'tvn' or None, got {normalize!r}")
        self.p_cutoff, self.inactive_rate = float(p_cutoff), float(inactive_rate)
        self.min_average, self.max_average = int(min_average), max_average
        self.batch_size, self.drop_last, self.seed, self.as_torch = int(batch_size), drop_last, seed, as_torch
        self.epoch = 0

        w = dataset.wells
        n = w.num_rows
        is_control = w.column("is_control").to_numpy(zero_copy_only=False).astype(bool)
        use = ~is_control
        if wells is not None:
            wells = np.asarray(wells)
            sel = np.zeros(n, bool)
            if wells.dtype == bool:
                if wells.shape != (n,):
                    raise ValueError(f"wells mask must have shape ({n},), got {wells.shape}")
                sel = wells
            else:
                sel[wells] = True
            use &= sel
        rows = np.flatnonzero(use)
        if rows.size == 0:
            raise ValueError("wells: no treated wells selected")

        # center (and whiten) only the selected rows: one copy of them, not of the whole matrix
        self._x = normalize_wells(dataset.phenomic_matrix(), w.column("batch").to_numpy(zero_copy_only=False),
                                  is_control, rows, normalize=normalize)

        mol = w.column("molecule_id").take(pa.array(rows)).to_pylist()
        conc = w.column("concentration_um").take(pa.array(rows)).to_numpy(zero_copy_only=False)
        keys = sorted(set(zip(mol, conc.tolist())))
        index = {k: i for i, k in enumerate(keys)}
        code = np.fromiter((index[k] for k in zip(mol, conc.tolist())), dtype=np.int64, count=len(rows))
        order = np.argsort(code, kind="stable")
        self._well_order = order  # positions into self._x grouped by sample
        self._counts = np.bincount(code, minlength=len(keys))
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self.samples = pa.table(
            {
                "molecule_id": pa.array([k[0] for k in keys], pa.string()),
                "concentration_um": pa.array([k[1] for k in keys], pa.float64()),
                "n_wells": pa.array(self._counts.astype(np.int32)),
            }
        )
        calls = calls if calls is not None else getattr(dataset, "calls", None)
        p = np.full(len(keys), np.nan)
        if calls is None:
            warnings.warn("ReplicateSampler: no activity calls; every sample counts as active",
                          stacklevel=external_stacklevel())
            self._active = np.ones(len(keys), bool)
        else:
            cm = calls.column("molecule_id").to_pylist()
            cc = calls.column("concentration_um").to_numpy(zero_copy_only=False).tolist()
            cp = calls.column("p_value").to_numpy(zero_copy_only=False)
            lookup = {k: float(v) for k, v in zip(zip(cm, cc), cp)}
            p = np.array([lookup.get(k, np.nan) for k in keys])
            missing = int(np.isnan(p).sum())
            if missing:
                warnings.warn(
                    f"ReplicateSampler: {missing} samples have no activity call; treated as inactive",
                    stacklevel=external_stacklevel(),
                )
            self._active = p < self.p_cutoff
        self.p_value = p

    # ------------------------------------------------------------------ properties
    @property
    def num_samples(self) -> int:
        """Number of distinct (molecule, concentration) samples."""
        return self.samples.num_rows

    @property
    def active(self) -> np.ndarray:
        """bool [num_samples]: p < p_cutoff (all True without calls)."""
        return self._active

    @property
    def embedding_dim(self) -> int:
        """Width of the returned embeddings (E, or the TVN dimension)."""
        return int(self._x.shape[1])

    def expected_epoch_size(self) -> float:
        """Expected samples per epoch: actives + inactive_rate * inactives."""
        a = int(self._active.sum())
        return a + self.inactive_rate * (self.num_samples - a)

    def __len__(self) -> int:
        """Expected number of batches per epoch (rounded)."""
        size = self.expected_epoch_size()
        return int(size // self.batch_size) if self.drop_last else int(math.ceil(size / self.batch_size))

    # ------------------------------------------------------------------ drawing
    def epoch_samples(self, epoch: int) -> np.ndarray:
        """The sample indices drawn in an epoch (after undersampling, shuffled).

        Args:
            epoch: Epoch number.

        Returns:
            int64 [n_drawn].
        """
        rng = np.random.default_rng([self.seed, int(epoch), 1])
        keep = self._active | (rng.random(self.num_samples) < self.inactive_rate)
        idx = np.flatnonzero(keep)
        return idx[rng.permutation(len(idx))]

    def average(self, sample_index: np.ndarray, rng: np.random.Generator,
                rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Average a random subset of replicate wells for each sample.

        Args:
            sample_index: int64 [B].
            rng: Generator.
            rows: ``(start, stop)``: average only the samples at these positions, after drawing
                the random subsets of all B samples (the draws are cheap integers), so every
                rank of a data-parallel run consumes ``rng`` exactly as a single process does
                and its rows are bitwise those of the single-process batch. ``None``: all rows.

        Returns:
            (embeddings float32 [n, E], subset sizes int64 [n]) with n = B, or ``stop - start``.
        """
        lo_row, hi_row = (0, len(sample_index)) if rows is None else (int(rows[0]), int(rows[1]))
        out = np.empty((hi_row - lo_row, self._x.shape[1]), dtype=np.float32)
        sizes = np.empty(hi_row - lo_row, dtype=np.int64)
        for i, s in enumerate(sample_index):
            c = int(self._counts[s])
            hi = c if self.max_average is None else min(c, self.max_average)
            lo = min(self.min_average, hi)
            k = int(rng.integers(lo, hi + 1))
            pick = self._well_order[self._starts[s] + rng.choice(c, size=k, replace=False)]
            if lo_row <= i < hi_row:
                out[i - lo_row] = self._x[pick].mean(0)
                sizes[i - lo_row] = k
        return out, sizes

    def num_batches(self, epoch: int) -> int:
        """Exact number of batches :meth:`iter_epoch` yields for an epoch.

        Args:
            epoch: Epoch number.

        Returns:
            Batch count (the final short batch counts unless ``drop_last``).
        """
        n = len(self.epoch_samples(epoch))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_rng(self, epoch: int, batch: int) -> np.random.Generator:
        """The generator that averages the replicates of one batch.

        Every batch has its own stream ``(seed, epoch, 2, batch)``, so batch ``b`` of an epoch
        is the same whether the epoch is iterated from its start or resumed at ``b``
        (:meth:`iter_epoch` with ``start_batch``).

        Args:
            epoch: Epoch number.
            batch: Batch position within the epoch.

        Returns:
            A fresh :class:`numpy.random.Generator`.
        """
        return np.random.default_rng([self.seed, int(epoch), 2, int(batch)])

    def iter_epoch(self, epoch: int, start_batch: int = 0, *,
                   shard: tuple[int, int] | None = None) -> Iterator[SampleBatch]:
        """Iterate over the batches of one epoch.

        Args:
            epoch: Epoch number (seeds the draw).
            start_batch: First batch to yield (resume an epoch part-way; the batches yielded
                are identical to those of a full iteration from that position on).
            shard: ``(rank, world_size)`` of a data-parallel run: each batch is this rank's
                contiguous slice (:func:`shard_bounds`) of the global batch of ``batch_size``
                samples, with bitwise the rows the single-process batch holds there (same
                samples, same replicate subsets). ``None``: whole batches.

        Yields:
            :class:`SampleBatch` (with ``global_size`` and ``offset`` set under a shard).

        Raises:
            ValueError: negative ``start_batch``; a rank outside ``[0, world_size)``. (A
                global batch with fewer rows than ranks gives some ranks empty slices.)
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        if shard is not None:
            rank, world = int(shard[0]), int(shard[1])
            shard_bounds(0, rank, world)  # validates the rank
        idx = self.epoch_samples(epoch)
        mids = self.samples.column("molecule_id").to_pylist()
        concs = self.samples.column("concentration_um").to_numpy()
        for bi, start in enumerate(range(0, len(idx), self.batch_size)):
            if bi < start_batch:
                continue
            b = idx[start : start + self.batch_size]
            if self.drop_last and len(b) < self.batch_size:
                break
            rows = None if shard is None else shard_bounds(len(b), rank, world)
            emb, sizes = self.average(b, self.batch_rng(epoch, bi), rows)
            if self.as_torch:
                import torch

                emb = torch.from_numpy(emb)
            loc = b if rows is None else b[rows[0] : rows[1]]
            yield SampleBatch(
                sample_index=loc,
                molecule_id=[mids[i] for i in loc],
                concentration_um=concs[loc],
                phenomic=emb,
                p_value=self.p_value[loc],
                active=self._active[loc],
                n_averaged=sizes,
                global_size=None if rows is None else len(b),
                offset=0 if rows is None else rows[0],
            )

    def __iter__(self) -> Iterator[SampleBatch]:
        """Iterate over the next epoch (the internal epoch counter advances)."""
        e = self.epoch
        self.epoch += 1
        return self.iter_epoch(e)
