"""Benchmarks of issue 7's performance items, on the shared harness (same checks, interleaved
repeats, memory in a fresh process per provider, CSV layout and results directory):

  train_step   one optimisation step at batch B (molphenix-small model, E = 384 phenomic inputs,
               2048 Morgan counts, S2L in the input similarity space, AdamW): forward of both
               encoders, loss, backward, optimiser step. Providers: ``ours`` (the loss on the
               compiled ops) and ``naive`` (the same loss with ``backend="reference"``).
               Throughput in samples/s.
  evaluate     molphenix.eval.evaluate_embeddings on Q queries x N candidates (pair match, 1,000
               bootstrap resamples): ``ours`` (compiled ranks) vs ``naive`` (reference backend).
  index_search molphenix.retrieval.Index.search on N candidates (D = 256, cosine on unit rows) vs
               faiss IndexFlatIP.search at the same k; both indexes built outside the timed call.

    python benches/bench_issue7.py                     # B = 4096; 10,000 x 10,000; 1,000,000 x 256, Q = 1,000, k = 100
    python benches/bench_issue7.py --quick --no-save
    python benches/bench_issue7.py --only index_search
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List

import numpy as np
import torch

from _harness import CheckFailed, open_run, parser

from molphenix.benchmark import Case, Provider, run_case, run_checks
from molphenix.benchmark.cases import phenomic_rows, verify_topk


def _want(name, only):
    return only is None or name in only


# ------------------------------------------------------------------------------------------------
class _TrainStep:
    op = "train_step"
    ref = "bench_issue7:TRAIN_STEP"

    def small(self, params):
        return dict(params, B=min(params["B"], 128))

    def memory_estimate(self, params, provider, dtype):
        return 32 * params["B"] ** 2 if provider == "naive" else None

    def _setup(self, params, seed=0):
        from molphenix.nn import create_model

        B, E, F = params["B"], params.get("E", 384), params.get("F", 2048)
        g = torch.Generator().manual_seed(seed)
        u = phenomic_rows(B, E, g).float()
        x = u * 10.0  # phenomic inputs; u is their scaled, control-centred copy
        fp = torch.poisson(torch.full((B, F), 0.05), generator=g)
        conc = torch.tensor([0.1, 1.0, 3.0, 10.0])[torch.randint(0, 4, (B,), generator=g)]
        torch.manual_seed(seed)
        model = create_model("molphenix-small", phenomic_dim=E, molecular_dim=F)
        return model, x, fp, conc, u

    def _step_fn(self, params, backend, threads, seed=0):
        from molphenix.losses import create_loss

        model, x, fp, conc, u = self._setup(params, seed)
        loss_fn = create_loss("s2l", backend=backend)
        opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            p = model.encode_wells(x)
            q = model.encode_molecules(fp, conc)
            out = loss_fn(p, q, u)
            out.loss.backward()
            opt.step()
            return out.loss.detach()

        return step, model

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        B = params["B"]
        case = Case(op=self.op, sizes={"B": B, "E": params.get("E", 384), "F": params.get("F", 2048),
                                       "model": "molphenix-small", "loss": "s2l"},
                    dtype=dtype, work=float(B), unit="samples/s")
        out = []
        if _want("naive", only):
            out.append(Provider("naive", self._step_fn(params, "reference", threads)[0],
                                notes="loss on the reference ops (autograd, B x B)"))
        if _want("ours", only):
            out.append(Provider("ours", self._step_fn(params, device if device != "cpu" else "cpu", threads)[0],
                                notes="loss on the compiled ops"))
        return case, out

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        params = {"B": 96, "E": 40, "F": 64}
        res = {}
        for name, backend in (("naive", "reference"), ("ours", device)):
            if not _want(name, only):
                continue
            step, model = self._step_fn(params, backend, threads, seed=3)
            model.eval()  # no dropout: both backends see the same forward
            loss = step()
            res[name] = (float(loss), torch.cat([p.detach().flatten() for p in model.parameters()]))
        if len(res) == 2:
            (l0, w0), (l1, w1) = res["naive"], res["ours"]
            dl, dw = abs(l0 - l1) / max(1.0, abs(l0)), float((w0 - w1).abs().max())
            if not (dl < 1e-4 and dw < 1e-5):
                raise CheckFailed(f"train_step: ours vs naive loss differs by {dl:.2e}, parameters after one "
                                  f"step by {dw:.2e}")
            yield f"ours vs naive: loss within {dl:.1e}, parameters after one AdamW step within {dw:.1e}"


# ------------------------------------------------------------------------------------------------
class _Evaluate:
    op = "evaluate_embeddings"
    ref = "bench_issue7:EVALUATE"

    def small(self, params):
        return dict(params, Q=min(params["Q"], 400), N=min(params["N"], 400))

    def memory_estimate(self, params, provider, dtype):
        return 12 * params["Q"] * params["N"] if provider == "naive" else None

    def _inputs(self, Q, N, D, seed=0):
        g = torch.Generator().manual_seed(seed)
        concs = [0.1, 1.0, 3.0, 10.0]
        n_mol = math.ceil(N / len(concs))
        cm = [f"m{i // len(concs)}" for i in range(N)]
        cc = np.array([concs[i % len(concs)] for i in range(N)])
        cand = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
        t = torch.randint(0, N, (Q,), generator=g)
        qe = torch.nn.functional.normalize(cand[t] + 1.5 * torch.randn(Q, D, generator=g) / math.sqrt(D) * 4, dim=1)
        qm = [cm[i] for i in t.tolist()]
        qc = cc[t.numpy()]
        qa = (torch.rand(Q, generator=g) < 0.5).numpy()
        del n_mol
        return qe, qm, qc, qa, cand, cm, cc

    def _fn(self, inputs, backend, threads, n_boot):
        from molphenix.eval import evaluate_embeddings

        qe, qm, qc, qa, ce, cm, cc = inputs
        return lambda: evaluate_embeddings(qe, qm, qc, qa, ce, cm, cc, match="pair", n_bootstrap=n_boot,
                                           backend=backend)

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        Q, N, D = params["Q"], params["N"], params["D"]
        nb = params.get("n_bootstrap", 1000)
        inputs = self._inputs(Q, N, D)
        case = Case(op=self.op, sizes={"Q": Q, "N": N, "D": D, "n_bootstrap": nb, "match": "pair"}, dtype=dtype,
                    flops=2.0 * Q * N * D, work=float(Q), unit="queries/s")
        out = []
        if _want("naive", only):
            out.append(Provider("naive", self._fn(inputs, "reference", threads, nb), notes="backend='reference'"))
        if _want("ours", only):
            out.append(Provider("ours", self._fn(inputs, device, threads, nb), notes=f"backend='{device}'"))
        return case, out

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        inputs = self._inputs(500, 700, 64, seed=1)
        got = {n: self._fn(inputs, b, threads, 100)() for n, b in (("naive", "reference"), ("ours", device))
               if _want(n, only)}
        if len(got) == 2 and repr(got["naive"]) != repr(got["ours"]):
            raise CheckFailed("evaluate_embeddings: ours and naive give different metrics")
        yield "ours and naive give identical metrics dicts (Q=500, N=700, 100 bootstrap resamples)"


# ------------------------------------------------------------------------------------------------
class _IndexSearch:
    op = "index_search"
    ref = "bench_issue7:INDEX_SEARCH"

    def small(self, params):
        return dict(params, N=min(params["N"], 5000), Q=min(params["Q"], 50), k=min(params["k"], 50))

    def _inputs(self, N, D, Q, seed=0):
        g = torch.Generator().manual_seed(seed)
        cand = torch.randn(N, D, generator=g)
        cand /= cand.norm(dim=1, keepdim=True)
        pick = torch.randint(0, N, (Q,), generator=g)
        qs = cand[pick] + 0.1 * torch.randn(Q, D, generator=g)
        qs /= qs.norm(dim=1, keepdim=True)
        return cand, qs

    def _providers(self, cand, qs, k, device, threads, only) -> List[Provider]:
        out = []
        if _want("ours", only):
            from molphenix.retrieval import Index

            idx = Index(cand, metric="cosine")
            out.append(Provider("ours", lambda: idx.search(qs, k, backend=device, num_threads=threads),
                                notes="molphenix.retrieval.Index (cosine), built outside the call"))
        if _want("faiss", only) and device == "cpu":
            try:
                import faiss
            except ImportError:
                return out
            fi = faiss.IndexFlatIP(cand.shape[1])
            fi.add(cand.numpy())
            qn = qs.numpy()
            out.append(Provider("faiss", lambda: fi.search(qn, k), notes="IndexFlatIP, built outside the call"))
        return out

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        N, D, Q, k = params["N"], params["D"], params["Q"], params["k"]
        cand, qs = self._inputs(N, D, Q)
        case = Case(op=self.op, sizes={"N": N, "D": D, "Q": Q, "k": k}, dtype=dtype, flops=2.0 * Q * N * D,
                    work=float(Q), unit="queries/s", outputs_bytes=Q * k * 12)
        return case, self._providers(cand, qs, k, device, threads, only)

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        cand, qs = self._inputs(3001, 64, 40, seed=1)
        k = 57
        for p in self._providers(cand, qs, k, device, threads, only):
            s, i = p.fn()
            s = torch.as_tensor(np.asarray(s.cpu() if hasattr(s, "cpu") else s))
            i = torch.as_tensor(np.asarray(i, dtype=np.int64))
            nbad, desc = verify_topk(s, i, qs, cand, k, 2e-5)
            if nbad:
                raise CheckFailed(f"index_search {p.name}: {desc}")
            yield f"{p.name}: {desc} (score gap <= 2.0e-05)"


TRAIN_STEP, EVALUATE, INDEX_SEARCH = _TrainStep(), _Evaluate(), _IndexSearch()

FULL = {"train_step": (TRAIN_STEP, {"B": 4096}), "evaluate_embeddings": (EVALUATE, {"Q": 10000, "N": 10000, "D": 256}),
        "index_search": (INDEX_SEARCH, {"N": 1_000_000, "D": 256, "Q": 1000, "k": 100})}
QUICK = {"train_step": (TRAIN_STEP, {"B": 512}), "evaluate_embeddings": (EVALUATE, {"Q": 1000, "N": 1000, "D": 64}),
         "index_search": (INDEX_SEARCH, {"N": 20000, "D": 64, "Q": 100, "k": 10})}


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated: train_step,evaluate_embeddings,index_search")
    args = p.parse_args(argv)
    plan: Dict = QUICK if args.quick else FULL
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only.split(",")}
    run = open_run(args, title="benches/bench_issue7.py")
    only = args.providers.split(",") if args.providers else None
    status = 0
    with run:
        for name, (spec, params) in plan.items():
            print(f"\n## {name}", flush=True)
            try:
                run_checks(run, spec, dtype=args.dtype, only=only)
            except CheckFailed as e:
                print(f"CHECK FAILED: {e}", flush=True)
                status = 1
                continue
            run_case(run, spec, params, dtype=args.dtype, only=only, warmup=args.warmup, repeats=args.repeats,
                     memory=not args.no_memory)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
