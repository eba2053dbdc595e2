"""Benchmarked pipeline stages: a training step, an evaluation, an index search (the performance
targets of the training and retrieval pipeline). Same protocol as :mod:`molphenix.benchmark.cases` (``build``, ``check``, ``small``,
``memory_estimate``; providers ``naive`` / ``ours`` / ``ours-<mode>`` / ``faiss``), so the harness
in :mod:`molphenix.benchmark` times them (interleaved repeats) and measures their memory (a fresh
process per provider) like every other case.

* :data:`TRAIN_STEP`: one optimisation step of ``molphenix-small`` (E phenomic inputs, F Morgan
  bits, log10+sigmoid dose encoding) with the ``s2l`` loss in the input similarity space, the way
  :mod:`molphenix.train` takes it: forward of both encoders, loss, backward, gradient-norm clip at 1, AdamW step, clamp of t and b. ``u`` is scaled by
  :func:`molphenix.losses.fit_similarity_scale` to the training default soft-positive fraction.
  ``naive``: the loss with ``backend="reference"``; ``ours``: the compiled ops. The encoders are
  the same torch code in both. Work: samples/s.
* :data:`EVALUATE`: :func:`molphenix.eval.evaluate_embeddings` on Q phenomic queries x N
  (molecule, concentration) candidates (``match="pair"``, four concentrations, cosine, 1,000
  bootstrap resamples): targets, ranks, recalls overall / active / per concentration with
  intervals. ``naive``: ``backend="reference"``; ``ours``: the compiled ranks; ``ours-noboot``:
  the same without the bootstrap (``n_bootstrap=0``).
* :data:`INDEX_SEARCH`: :meth:`molphenix.retrieval.Index.search` (cosine) on N candidates vs faiss
  ``IndexFlatIP.search`` at the same k, both indexes built once outside the timed call (a user
  builds an index once and searches it many times). The candidates are unit rows, so inner product
  and cosine order them alike.
* :data:`FINITE_CHECK`: only the NaN/Inf scan of the candidate matrix that the ops'
  argument checks run on every ``topk_retrieve`` / ``retrieval_ranks`` call
  (:func:`molphenix.ops.check_finite`), at the index's size: the part of a search that
  does not depend on Q or k.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from molphenix.benchmark import Case, CheckFailed, Provider
from molphenix.benchmark.cases import phenomic_rows, verify_topk

__all__ = ["TRAIN_STEP", "EVALUATE", "INDEX_SEARCH", "FINITE_CHECK", "PIPELINE_SPECS"]

DOSES_UM = (0.1, 0.3, 1.0, 3.0, 10.0)
EVAL_DOSES_UM = (0.25, 1.0, 2.5, 10.0)


def _want(name: str, only: Optional[Sequence[str]]) -> bool:
    return only is None or name in only


def _cpu_only(device: str, what: str) -> None:
    if device != "cpu":
        raise ValueError(f"{what}: this benchmark case is CPU only (got device {device!r})")


# ------------------------------------------------------------------------------------------------
# training step

class _TrainStepSpec:
    op = "train_step"
    ref = "molphenix.benchmark.cases_pipeline:TRAIN_STEP"

    def small(self, params):
        return dict(params, B=min(params["B"], 256))

    def memory_estimate(self, params, provider, dtype):
        if provider == "naive":  # the reference S2L keeps about eight B x B float32 tensors
            return 32 * params["B"] ** 2
        return None

    @staticmethod
    def data(params: Dict[str, Any], seed: int = 0):
        """Phenomic inputs x [B, E] (control-like rows and a third of 'active' rows far away),
        the model input x / rms, u = x / sigma with sigma fitted to ``soft_frac``, Morgan-like
        bits [B, F] (``bit_density``), doses [B]."""
        from molphenix.losses import fit_similarity_scale

        B, E, F = params["B"], params.get("E", 384), params.get("F", 2048)
        g = torch.Generator().manual_seed(seed)
        x = phenomic_rows(B, E, g)
        rms = float(x.pow(2).mean().sqrt())
        sigma = fit_similarity_scale(x.numpy(), params.get("soft_frac", 0.02), seed=seed)
        xin = (x / rms).float()
        u = (x / sigma).float()
        bits = (torch.rand(B, F, generator=g) < params.get("bit_density", 0.03)).float()
        conc = torch.tensor(DOSES_UM, dtype=torch.float32)[torch.randint(0, len(DOSES_UM), (B,), generator=g)]
        return xin, u, bits, conc

    @staticmethod
    def _model(params: Dict[str, Any], seed: int):
        from molphenix.nn import create_model

        torch.manual_seed(seed)
        return create_model(params.get("model", "molphenix-small"), phenomic_dim=params.get("E", 384),
                            molecular_dim=params.get("F", 2048))

    def _stepper(self, params, inputs, backend: str, seed: int = 0, *, lr: float = 1e-3):
        """(step(), model, loss_fn): one training step as :mod:`molphenix.train` takes it; the
        AdamW state is created before (a zero-gradient step at lr 0), so a timed step is a steady
        one."""
        from molphenix.losses import create_loss

        xin, u, bits, conc = inputs
        model = self._model(params, seed)
        loss_fn = create_loss(params.get("loss", "s2l"), backend=backend)
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        no_decay += [p for p in loss_fn.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=0.0)
        params_all = decay + no_decay
        for p in params_all:
            p.grad = torch.zeros_like(p)
        opt.step()  # lr 0: creates exp_avg / exp_avg_sq, leaves the parameters unchanged
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.zero_grad(set_to_none=True)
        model.train()
        stats: Dict[str, float] = {}

        def step():
            opt.zero_grad(set_to_none=True)
            p = model.encode_wells(xin)
            q = model.encode_molecules(bits, conc)
            out = loss_fn(p, q, u)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params_all, 1.0)
            opt.step()
            loss_fn.clamp_parameters_()
            if not stats:  # the trainer logs the statistic every few steps: here on the first call
                stats.update({k: float(v) for k, v in out.stats.items()})
                stats["soft_pos_frac"] = float(loss_fn.soft_positive_fraction(p.detach(), u))
            return out.loss.detach()

        step.stats = stats  # type: ignore[attr-defined]
        return step, model, loss_fn

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        _cpu_only(device, self.op)
        if dtype != "float32":
            raise ValueError(f"{self.op}: float32 only (the model's dtype), got {dtype}")
        B, E, F = params["B"], params.get("E", 384), params.get("F", 2048)
        inputs = self.data(params, seed=params.get("seed", 0))
        case = Case(op=self.op, sizes={"B": B, "E": E, "F": F, "model": params.get("model", "molphenix-small"),
                                       "loss": params.get("loss", "s2l"), "soft_frac": params.get("soft_frac", 0.02)},
                    dtype=dtype, work=float(B), unit="samples/s")
        out = []
        note = ("fwd both encoders + loss + bwd + clip + AdamW step (the soft_pos_frac statistic on the "
                "first call only, as the trainer logs it every few steps); dropout on; AdamW state "
                "created before timing")
        if _want("naive", only):
            out.append(Provider("naive", self._stepper(params, inputs, "reference")[0],
                                notes="loss backend='reference' (B x B, autograd); " + note))
        if _want("ours", only):
            out.append(Provider("ours", self._stepper(params, inputs, "cpu")[0],
                                notes="loss on the compiled ops (backend='cpu'); " + note))
        return case, out

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        """ours vs naive on one step of identical models (dropout off): the loss and every
        parameter's gradient (relative to its max |grad|), before the optimiser step."""
        _cpu_only(device, self.op)
        params = {"B": 300, "E": 384, "F": 2048, "soft_frac": 0.02}
        inputs = self.data(params, seed=1)
        xin, u, bits, conc = inputs
        got = {}
        for name, backend in (("naive", "reference"), ("ours", "cpu")):
            _, model, loss_fn = self._stepper(params, inputs, backend, seed=3)
            model.eval()
            p = model.encode_wells(xin)
            out = loss_fn(p, model.encode_molecules(bits, conc), u)
            out.loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            grads.update({"loss." + n: p.grad.detach().clone() for n, p in loss_fn.named_parameters()
                          if p.grad is not None})
            got[name] = (float(out.loss.detach()), grads, float(loss_fn.soft_positive_fraction(p.detach(), u)))
        (l0, g0, f0), (l1, g1, f1) = got["naive"], got["ours"]
        tol = 1e-4
        dl = abs(l0 - l1) / max(1e-12, abs(l0))
        worst, wname = 0.0, ""
        for n in g0:
            e = float((g0[n] - g1[n]).abs().max() / g0[n].abs().max().clamp_min(1e-12))
            if e > worst:
                worst, wname = e, n
        if not (dl < tol and worst < tol) or f0 != f1:
            raise CheckFailed(f"train_step ours vs naive (B=300): loss relative difference {dl:.2e}, worst "
                              f"gradient {wname} {worst:.2e} (tolerance {tol:g}); soft_pos_frac {f0} vs {f1}")
        yield (f"ours vs naive B=300: loss within {dl:.1e}, every parameter gradient within {worst:.1e} "
               f"(relative to its max |grad|; tolerance {tol:g}); soft_pos_frac {f1:.4f} in both")


TRAIN_STEP = _TrainStepSpec()


# ------------------------------------------------------------------------------------------------
# evaluation

class _EvaluateSpec:
    op = "evaluate_embeddings"
    ref = "molphenix.benchmark.cases_pipeline:EVALUATE"

    def small(self, params):
        return dict(params, Q=min(params["Q"], 400), N=min(params["N"], 400))

    def memory_estimate(self, params, provider, dtype):
        if provider == "naive":  # the reference ranks hold the Q x N scores and a comparison
            return 12 * params["Q"] * params["N"]
        return None

    @staticmethod
    def data(Q: int, N: int, D: int, seed: int = 0, active_frac: float = 1 / 3):
        """N candidates = N / 4 molecules x 4 doses (unit rows); Q queries, query i a noisy copy
        of candidate t_i (t a random permutation when Q <= N), with t_i's keys; a third active."""
        g = torch.Generator().manual_seed(seed)
        nd = len(EVAL_DOSES_UM)
        cm = [f"mol{j // nd:06d}" for j in range(N)]
        cc = np.array([EVAL_DOSES_UM[j % nd] for j in range(N)], dtype=np.float64)
        cand = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
        t = torch.randperm(N, generator=g)[:Q] if Q <= N else torch.randint(0, N, (Q,), generator=g)
        qe = torch.nn.functional.normalize(cand[t] + 1.2 * torch.randn(Q, D, generator=g) / math.sqrt(D) * 4.0,
                                           dim=1)
        qm = [cm[j] for j in t.tolist()]
        qc = cc[t.numpy()]
        qa = (torch.rand(Q, generator=g) < active_frac).numpy()
        return qe.contiguous(), qm, qc, qa, cand.contiguous(), cm, cc

    @staticmethod
    def _fn(inputs, backend: str, n_boot: int):
        from molphenix.eval import evaluate_embeddings

        qe, qm, qc, qa, ce, cm, cc = inputs
        return lambda: evaluate_embeddings(qe, qm, qc, qa, ce, cm, cc, match="pair", n_bootstrap=n_boot,
                                           metric="cosine", backend=backend)

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        _cpu_only(device, self.op)
        Q, N, D = params["Q"], params["N"], params["D"]
        nb = params.get("n_bootstrap", 1000)
        inputs = self.data(Q, N, D, seed=params.get("seed", 0))
        if dtype != "float32":
            td = getattr(torch, dtype)
            inputs = (inputs[0].to(td),) + inputs[1:4] + (inputs[4].to(td),) + inputs[5:]
        case = Case(op=self.op, sizes={"Q": Q, "N": N, "D": D, "n_bootstrap": nb, "match": "pair",
                                       "doses": len(EVAL_DOSES_UM)},
                    dtype=dtype, flops=2.0 * Q * N * D, work=float(Q), unit="queries/s", outputs_bytes=0)
        out = []
        if _want("naive", only):
            out.append(Provider("naive", self._fn(inputs, "reference", nb),
                                notes="evaluate_embeddings(backend='reference'): ranks from the Q x N scores"))
        if _want("ours", only):
            out.append(Provider("ours", self._fn(inputs, "cpu", nb),
                                notes="evaluate_embeddings(backend='cpu'): compiled streamed ranks"))
        if _want("ours-noboot", only):
            out.append(Provider("ours-noboot", self._fn(inputs, "cpu", 0),
                                notes="as ours with n_bootstrap=0 (no intervals): the bootstrap's share"))
        return case, out

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        """ours and naive give identical metrics dicts (recalls, intervals, ranks) on a small case."""
        _cpu_only(device, self.op)
        inputs = self.data(600, 800, 64, seed=1)
        want = self._fn(inputs, "reference", 200)()
        got = self._fn(inputs, "cpu", 200)()
        if repr(want) != repr(got):
            raise CheckFailed("evaluate_embeddings: backend='cpu' and backend='reference' give different "
                              "metrics (Q=600, N=800, D=64, 200 resamples)")
        a = want["all"]
        yield (f"ours vs naive Q=600 N=800 D=64: identical metrics dicts (top1 {a['top1']:.3f}, "
               f"top5 {a['top5']:.3f}, chance {a['chance']['top1']:.3f}/{a['chance']['top5']:.3f})")


EVALUATE = _EvaluateSpec()


# ------------------------------------------------------------------------------------------------
# index search

_CACHE: Dict[str, Any] = {}


def unit_candidates(N: int, D: int, seed: int = 0) -> torch.Tensor:
    """[N, D] float32 unit rows, generated in blocks (no float64 copy of the whole matrix)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(N, D, dtype=torch.float32)
    for i0 in range(0, N, 1 << 16):
        blk = torch.randn(min(N, i0 + (1 << 16)) - i0, D, generator=g)
        out[i0:i0 + blk.shape[0]] = torch.nn.functional.normalize(blk, dim=1)
    return out


def index_queries(cand: torch.Tensor, Q: int, seed: int = 1) -> torch.Tensor:
    """Q unit queries, each a noisy copy of a random candidate (its true match)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, cand.shape[0], (Q,), generator=g)
    q = cand[pick] + 0.06 * torch.randn(Q, cand.shape[1], generator=g)
    return torch.nn.functional.normalize(q, dim=1).contiguous()


def _ours_index(N: int, D: int, seed: int, cache: bool = True):
    """``Index(unit rows, metric="cosine")``; its stored (normalised) rows are THE candidate
    matrix of the case: faiss and the finite-check case use them too, so one copy is kept."""
    from molphenix.retrieval import Index

    key = ("ours", N, D, seed)
    if cache and _CACHE.get("ours_key") == key:
        return _CACHE["ours"]
    _CACHE.clear()  # one case's indexes at a time
    cand = unit_candidates(N, D, seed)
    idx = Index(cand, metric="cosine")
    del cand
    if cache:
        _CACHE["ours_key"], _CACHE["ours"] = key, idx
    return idx


def _faiss_index(cand: torch.Tensor, key: Tuple[int, int, int], cache: bool = True):
    import faiss

    if cache and _CACHE.get("faiss_key") == key:
        return _CACHE["faiss"]
    idx = faiss.IndexFlatIP(cand.shape[1])
    idx.add(cand.numpy())
    if cache:
        _CACHE["faiss_key"], _CACHE["faiss"] = key, idx
    return idx


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class _IndexSearchSpec:
    op = "index_search"
    ref = "molphenix.benchmark.cases_pipeline:INDEX_SEARCH"

    def small(self, params):
        return dict(params, N=min(params["N"], 20000), Q=min(params["Q"], 16), k=min(params["k"], 50))

    def memory_estimate(self, params, provider, dtype):
        return None

    @staticmethod
    def _providers(idx, qs, k, threads, only, *, faiss_index=None) -> List[Provider]:
        out = []
        if _want("ours", only):
            out.append(Provider("ours", lambda: idx.search(qs, k, backend="cpu", num_threads=threads),
                                notes="molphenix.retrieval.Index(metric='cosine').search; index built outside "
                                      "the call; includes the ops' argument checks"))
        if _want("faiss", only) and _faiss_available():
            fi = faiss_index if faiss_index is not None else _faiss_index(idx.embeddings, None, cache=False)
            qn = qs.numpy()
            out.append(Provider("faiss", lambda: fi.search(qn, k),
                                notes="faiss.IndexFlatIP.search (float32) on the same rows; index built "
                                      "outside the call"))
        return out

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        _cpu_only(device, self.op)
        if dtype != "float32":
            raise ValueError(f"{self.op}: float32 only (faiss), got {dtype}")
        N, D, Q, k = params["N"], params["D"], params["Q"], params["k"]
        seed = params.get("seed", 0)
        idx = _ours_index(N, D, seed)
        qs = index_queries(idx.embeddings, Q, seed + 1)
        fi = None
        if _want("faiss", only) and _faiss_available():
            fi = _faiss_index(idx.embeddings, (N, D, seed))
        case = Case(op=self.op, sizes={"N": N, "D": D, "Q": Q, "k": k}, dtype=dtype, flops=2.0 * Q * N * D,
                    work=float(Q), unit="queries/s", outputs_bytes=Q * k * (4 + 8))
        return case, self._providers(idx, qs, k, threads, only, faiss_index=fi)

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        """Every provider's lists are a top-k of the float64 scores up to near-ties (2e-5; a few
        exactly duplicated rows make exact ties), and ours and faiss list the same ids in the same
        order except where a near-tie explains the difference."""
        from molphenix.retrieval import Index

        _cpu_only(device, self.op)
        N, D, Q = 100_000, 256, 48
        cand = unit_candidates(N, D, seed=7)
        cand[N - 5:] = cand[:5]  # exact ties
        idx = Index(cand, metric="cosine")
        cand = idx.embeddings
        qs = index_queries(cand, Q, seed=8)
        qs[:5] = cand[:5]  # queries whose best match is an exact tie
        tol = 2e-5
        for k in (10, 1000):
            res = {}
            for p in self._providers(idx, qs, k, threads, only):
                s, i = p.fn()
                s = torch.as_tensor(np.asarray(s))
                i = torch.as_tensor(np.asarray(i, dtype=np.int64))
                nbad, desc = verify_topk(s, i, qs, cand, k, tol)
                if nbad:
                    raise CheckFailed(f"index_search {p.name} (N={N} D={D} Q={Q} k={k}): {desc} (tolerance {tol:g})")
                res[p.name] = i
                yield f"{p.name} N={N} D={D} Q={Q} k={k}: {desc} (score gap <= {tol:.0e})"
            if "ours" in res and "faiss" in res:
                a, b = res["ours"], res["faiss"]
                S = qs.double() @ cand.double().T
                sa, sb = S.gather(1, a), S.gather(1, b)
                diff = a != b
                gap = float((sa - sb).abs()[diff].max()) if diff.any() else 0.0
                if gap > tol:
                    raise CheckFailed(f"index_search ours vs faiss k={k}: a differing position's float64 scores "
                                      f"differ by {gap:.2e} > {tol:g} (not a tie)")
                yield (f"ours vs faiss k={k}: {int((~diff).all(1).sum())} of {Q} id lists identical in order; "
                       f"{int(diff.sum())} differing positions, float64 scores there differ by <= {gap:.1e} "
                       f"(ties)")


INDEX_SEARCH = _IndexSearchSpec()


class _FiniteCheckSpec:
    """The ops' NaN/Inf scan of an [N, D] candidate matrix alone (what every search pays once);
    beside it, for comparison, torch's one-pass ``isfinite(x).all()`` and a one-pass sum screen."""

    op = "ops_check_finite"
    ref = "molphenix.benchmark.cases_pipeline:FINITE_CHECK"

    def small(self, params):
        return dict(params, N=min(params["N"], 20000))

    def memory_estimate(self, params, provider, dtype):
        return None

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        from molphenix.ops import check_finite

        N, D = params["N"], params["D"]
        cand = _ours_index(N, D, params.get("seed", 0)).embeddings
        case = Case(op=self.op, sizes={"N": N, "D": D}, dtype=dtype, work=float(N) * D * 4 / 1e9, unit="GB/s")
        out = []
        if _want("ours", only):
            out.append(Provider("ours", lambda: check_finite(cand, "candidates"),
                                notes="molphenix.ops.check_finite(candidates): the scan that "
                                      "topk_retrieve / retrieval_ranks run on every call"))
        if _want("torch-isfinite", only):
            out.append(Provider("torch-isfinite", lambda: bool(torch.isfinite(cand).all()),
                                notes="torch.isfinite(x).all() in one pass (full-size temporaries)"))
        if _want("torch-sum", only):
            out.append(Provider("torch-sum", lambda: bool(torch.isfinite(cand.sum())),
                                notes="screen: x.sum() is finite only if every element is (an exact scan is "
                                      "then needed only when it is not: a bad value or an overflow)"))
        return case, out

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        from molphenix.ops import check_finite

        x = torch.zeros(3000, 64)
        check_finite(x, "x")
        x[2999, 63] = float("nan")
        try:
            check_finite(x, "x")
        except ValueError:
            yield "check_finite: accepts a finite matrix, rejects one NaN"
            return
        raise CheckFailed("check_finite did not reject a NaN")


FINITE_CHECK = _FiniteCheckSpec()

PIPELINE_SPECS = {s.op: s for s in (TRAIN_STEP, EVALUATE, INDEX_SEARCH, FINITE_CHECK)}
