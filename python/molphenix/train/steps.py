"""The step loop of a training run: forward, loss, backward, clip, AdamW step; validation,
checkpoints and ``train_log.csv``.

The host never waits for the device inside a step. Each step's values (loss, ``t``, ``b``,
gradient norm, and whether the embeddings, the similarity inputs, the loss and the gradient norm
are finite) stay on the device as a *pending* record; the host reads a window of records at once
(:meth:`StepLoop.resolve`): every step on CPU (where nothing is asynchronous), every
:data:`CUDA_RESOLVE_EVERY` steps on CUDA, and always before a validation, a checkpoint and at
the end. A non-finite value raises there, naming the first step that had it, before anything
of that step or later is validated or written, so no checkpoint ever holds a non-finite model.
The soft-positive fraction (a second similarity pass) is computed every :data:`STATS_EVERY`
steps only.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from .checkpoint import CHECKPOINT_FORMAT, capture_rng, save_checkpoint

__all__ = ["StepLoop", "STATS_EVERY", "CUDA_RESOLVE_EVERY", "lr_at", "rank_step_seed"]

#: ``soft_pos_frac`` is logged at steps 1, 1 + STATS_EVERY, 1 + 2 STATS_EVERY, ...
STATS_EVERY = 10
#: On CUDA, the host reads the device's values of this many steps at once.
CUDA_RESOLVE_EVERY = 25

# the device values of a pending step, in this order
_VALUES = ("loss", "t", "b", "soft_pos_frac", "grad_norm", "ok_p", "ok_q", "ok_u", "ok_loss")


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Learning rate of (0-based) step ``step``: linear warm-up to ``peak``, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))


def rank_step_seed(seed: int, rank: int, step: int) -> int:
    """Torch seed of one rank at one step of a data-parallel run (dropout draws)."""
    return int(np.random.SeedSequence([int(seed), 5, int(rank), int(step)]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class _Record:
    """One step: host values now, device values until :meth:`StepLoop.resolve` reads them."""

    step: int
    epoch: int
    batch: int
    samples_seen: int
    n: int
    lr: float
    elapsed_s: float
    device_values: List[Any]
    values: Dict[str, Optional[float]] = field(default_factory=dict)
    val: Optional[float] = None
    val_mrr: Optional[float] = None


def resolve_every(device: Any) -> int:
    """Steps whose device values the host reads at once: 1 on CPU (nothing is asynchronous
    there, so errors surface at the step itself), :data:`CUDA_RESOLVE_EVERY` elsewhere."""
    return 1 if device.type == "cpu" else CUDA_RESOLVE_EVERY


def _fmt(v: Optional[float]) -> str:
    return "" if v is None else f"{float(v):.6g}"


class StepLoop:
    """Runs the steps of the trainer ``tr`` (a ``molphenix.train.loop._Trainer`` after set-up).

    Args:
        tr: The trainer: ``cfg``, ``state``, ``run_dir``, ``ranks``, ``model``, ``heads``,
            ``loss_fn``, ``loss_call``, ``loss_checked``, ``opt``, ``params``, ``param_names``, ``device``,
            ``mols``, ``sample_mol_row``, ``input_scale``, ``similarity_scale``, ``validator``
            and ``batches(epoch, batch)``.
        logf: The open ``train_log.csv`` (rank 0) or None.
        bar: A tqdm progress bar or None.
    """

    def __init__(self, tr: Any, logf: Any, bar: Any):
        self.tr, self.bar = tr, bar
        self.writer = csv.writer(logf, lineterminator="\n") if logf is not None else None
        self.logf = logf
        self.pending: List[_Record] = []
        self.resolve_every = resolve_every(tr.device)
        self.window_t0: Optional[float] = None
        self.last_grads_step: Optional[int] = None

    # ------------------------------------------------------------------ the loop
    def run(self, total: int) -> None:
        """Train from the trainer's state to step ``total``."""
        import torch

        tr = self.tr
        cfg, st, ranks = tr.cfg, tr.state, tr.ranks
        warm = int(round(cfg.warmup * total))
        budget = tr.budget  # molphenix.train.recipe: cadence, criterion, early stopping
        eval_every = budget.eval_every
        last_ckpt = time.monotonic()
        t_start = time.perf_counter()
        elapsed0 = float(st["elapsed_s"])
        batches = tr.batches(st["epoch"], st["batch"])
        tr.model.train()
        while st["step"] < total:
            step = st["step"]
            t0 = time.perf_counter()
            if self.window_t0 is None:
                self.window_t0 = t0
            if ranks.active:
                # dropout draws: a function of (seed, rank, step), so every rank masks its own
                # rows differently and a resumed run (any checkpoint) draws as the uninterrupted one
                torch.manual_seed(rank_step_seed(cfg.seed, ranks.rank, step))
            epoch, bi, sb = next(batches)
            lr = lr_at(step, total, warm, cfg.lr)
            values = self._step(sb, lr, step, with_stats=(step % STATS_EVERY == 0))
            n = len(sb) if sb.global_size is None else int(sb.global_size)
            st.update(step=step + 1, epoch=epoch, batch=bi + 1, samples_seen=st["samples_seen"] + n)
            st["elapsed_s"] = elapsed0 + (time.perf_counter() - t_start)
            self.pending.append(_Record(st["step"], epoch, bi, st["samples_seen"], n, lr, st["elapsed_s"], values))
            self.last_grads_step = st["step"]
            final = st["step"] == total
            validate = final or (eval_every > 0 and st["step"] % eval_every == 0)
            now = time.monotonic()
            checkpoint = ranks.main and (final or now - last_ckpt >= cfg.checkpoint_every)
            stop = False
            if validate or checkpoint or len(self.pending) >= self.resolve_every:
                rows = self.resolve()
                if validate:
                    stop = self._validate(rows[-1], final)
                self._write(rows)
            if stop:  # early stopping: this step is the run's last
                final, checkpoint = True, ranks.main
            if checkpoint:
                if final and st["best_metric"] is None:
                    # no validation split: the final model is the best we know
                    save_checkpoint(tr.checkpoint(finished=True), tr.run_dir / "checkpoints" / "best.pt")
                save_checkpoint(tr.checkpoint(finished=final), tr.run_dir / "checkpoints" / "last.pt")
                last_ckpt = now
            if stop:
                break
        if ranks.active:
            # the others wait for rank 0's last checkpoint: when fit returns on any rank, the run
            # directory is complete
            ranks.barrier("the final checkpoint")

    def _validate(self, row: _Record, final: bool) -> bool:
        """Validate the current model, keep ``best.pt`` and count validations without improvement;
        True when early stopping ends the run here."""
        tr = self.tr
        st, budget = tr.state, tr.budget
        val = tr.validator(tr)
        tr.model.train()
        if val is None:
            return False
        row.val, row.val_mrr = val["recall"], val["mrr"]
        crit = val[budget.val_metric]
        if st["best_metric"] is None or crit > st["best_metric"]:
            st["best_metric"], st["best_step"], st["stale"] = crit, st["step"], 0
            if tr.ranks.main:
                save_checkpoint(tr.checkpoint(finished=False), tr.run_dir / "checkpoints" / "best.pt")
        else:
            st["stale"] = int(st.get("stale") or 0) + 1
        if budget.early_stopping and not final and st["stale"] >= budget.patience:
            st["stopped_step"] = st["step"]
            return True
        return False

    def _step(self, sb: Any, lr: float, step: int, *, with_stats: bool) -> List[Any]:
        """One optimizer step on the batch ``sb``; returns its device values (see _VALUES)."""
        import torch

        tr = self.tr
        dev = tr.device
        x = _to_device(torch.from_numpy(sb.phenomic), dev)
        conc = _to_device(torch.from_numpy(np.asarray(sb.concentration_um, dtype=np.float32)), dev)
        mol = tr.mols.batch(tr.sample_mol_row[sb.sample_index], dev)
        xin = x / tr.input_scale
        use_amp = tr.cfg.amp and dev.type == "cuda"
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            p, q = tr.heads(xin, mol, conc)
        p, q = p.float(), q.float()
        u = x / tr.similarity_scale if (tr.similarity_scale is not None and tr.loss_fn.needs_u) else None
        ok_p, ok_q = torch.isfinite(p).all(), torch.isfinite(q).all()
        ok_u = torch.isfinite(u).all() if u is not None else ok_p.new_ones(())
        # distributed: the loss is the global batch's on every rank, so a non-finite input on
        # any rank shows on all of them (and every rank raises at the same step)
        try:
            # ok_p / ok_q / ok_u are this step's own finiteness checks (read with the step's other
            # values): a loss that can skip the op's checks, which sync the host, does so
            out = tr.loss_call(p, q, u, checked=True) if tr.loss_checked else tr.loss_call(p, q, u)
        except ValueError:
            # the ops reject non-finite inputs: name the step (an earlier one if it caused this)
            self.resolve()
            for ok, name in ((ok_p, "p (phenomic embeddings)"), (ok_q, "q (molecular embeddings)"),
                             (ok_u, "u (similarity inputs)")):
                if not bool(ok):
                    raise ValueError(f"non-finite {name} at step {step}; lower lr or check the inputs") from None
            raise
        loss = out.loss
        frac = None
        if with_stats:
            frac = out.stats.get("soft_pos_frac")
            if frac is None:
                frac = tr.loss_call.soft_positive_fraction(p, u)
        for g in tr.opt.param_groups:
            g["lr"] = lr
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP sums the heads' gradients over the ranks (_dist.allreduce_sum_hook)
        if tr.cfg.grad_clip:
            gn = torch.nn.utils.clip_grad_norm_(tr.params, tr.cfg.grad_clip)
        else:
            gn = torch.norm(torch.stack([p_.grad.detach().norm() for p_ in tr.params if p_.grad is not None]))
        tr.opt.step()
        tr.loss_fn.clamp_parameters_()
        return [loss.detach(), out.stats.get("t"), out.stats.get("b"), frac, gn.detach(),
                ok_p, ok_q, ok_u, torch.isfinite(loss.detach())]

    # ------------------------------------------------------------------ reading the device
    def resolve(self) -> List[_Record]:
        """Read the pending steps' values (one device-to-host transfer) and check them.

        Returns:
            The resolved records, in step order.

        Raises:
            ValueError: a non-finite embedding, similarity input, loss or gradient norm (the
                first step that had one is named).
        """
        import torch

        rows, self.pending = self.pending, []
        if not rows:
            return rows
        present = [[v is not None for v in r.device_values] for r in rows]
        vals = [v for r in rows for v in r.device_values if v is not None]
        host: List[Optional[float]] = [None] * len(vals)
        on_device = [i for i, v in enumerate(vals) if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
        if on_device:  # one transfer for the whole window
            moved = torch.stack([vals[i].reshape(()).to(torch.float64) for i in on_device]).cpu().tolist()
            for i, x in zip(on_device, moved):
                host[i] = x
        for i, v in enumerate(vals):
            if host[i] is None:
                host[i] = float(v)
        it = iter(host)
        elapsed = time.perf_counter() - (self.window_t0 if self.window_t0 is not None else time.perf_counter())
        self.window_t0 = None
        rate = sum(r.n for r in rows) / max(elapsed, 1e-9)
        for r, has in zip(rows, present):
            r.values = {k: (next(it) if h else None) for k, h in zip(_VALUES, has)}
            r.values["samples_per_s"] = rate
            self._check(r)
        return rows

    def _check(self, r: _Record) -> None:
        v = r.values
        for key, name in (("ok_p", "p (phenomic embeddings)"), ("ok_q", "q (molecular embeddings)"),
                          ("ok_u", "u (similarity inputs)")):
            if not v[key]:
                raise ValueError(f"non-finite {name} at step {r.step - 1}; lower lr or check the inputs")
        if not v["ok_loss"]:
            raise ValueError(f"non-finite loss ({v['loss']}) at step {r.step - 1}; lower lr or check the inputs")
        if not math.isfinite(v["grad_norm"]):
            raise ValueError(self._nonfinite_grad_msg(r.step))

    def _nonfinite_grad_msg(self, step: int) -> str:
        import torch

        if step == self.last_grads_step:  # the gradients of that step are still there: name one
            for prm in self.tr.params:
                if prm.grad is not None and not bool(torch.isfinite(prm.grad).all()):
                    return (f"non-finite gradient of {self.tr.param_names.get(id(prm), '?')} at step {step - 1}; "
                            "lower lr or check the inputs")
        return f"non-finite gradient norm at step {step - 1}; lower lr or check the inputs"

    def _write(self, rows: List[_Record]) -> None:
        """The resolved rows into ``train_log.csv`` and the progress bar (rank 0)."""
        tr = self.tr
        if not tr.ranks.main or not rows:
            return
        for r in rows:
            v = r.values
            self.writer.writerow([r.step, r.epoch, r.batch, r.samples_seen, f"{v['loss']:.6g}", f"{r.lr:.6g}",
                                  _fmt(v["t"]), _fmt(v["b"]), _fmt(v["soft_pos_frac"]), f"{v['grad_norm']:.6g}",
                                  f"{v['samples_per_s']:.1f}", f"{r.elapsed_s:.3f}",
                                  "" if r.val is None else f"{r.val:.6g}", tr.ranks.world,
                                  "" if r.val_mrr is None else f"{r.val_mrr:.6g}"])
        self.logf.flush()
        if self.bar is not None:
            self.bar.update(len(rows))
            post = {"loss": f"{rows[-1].values['loss']:.4f}"}
            if tr.state["best_metric"] is not None:
                post["val"] = f"{tr.state['best_metric']:.3f}"
            self.bar.set_postfix(post, refresh=False)


def _to_device(t: Any, device: Any) -> Any:
    """A CPU tensor on ``device``: as it is on CPU; on CUDA through pinned memory, asynchronously
    (the host does not wait for the device's queue to drain)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def make_checkpoint(tr: Any, *, finished: bool) -> Dict[str, Any]:
    """The checkpoint dict of the trainer ``tr``'s current state (molphenix.train.checkpoint)."""
    st, cfg = tr.state, tr.cfg
    return {
        "format": CHECKPOINT_FORMAT,
        "step": int(st["step"]),
        "epoch": int(st["epoch"]),
        "batch": int(st["batch"]),
        "samples_seen": int(st["samples_seen"]),
        "elapsed_s": float(st["elapsed_s"]),
        "best_metric": st["best_metric"],
        "best_step": st["best_step"],
        "stale": int(st.get("stale") or 0),
        "stopped_step": st.get("stopped_step"),
        "finished": bool(finished),
        "total_steps": int(tr.total),
        "model": tr.model.state_dict(),
        "loss": tr.loss_fn.state_dict(),
        "optimizer": tr.opt.state_dict(),
        "scheduler": {"kind": "warmup_cosine", "step": int(st["step"]), "total_steps": int(tr.total),
                      "warmup_steps": int(round(cfg.warmup * tr.total)), "peak_lr": float(cfg.lr)},
        "rng": capture_rng(),
        "config_hash": cfg.identity_hash(),
        "world_size": int(tr.ranks.world),
    }
