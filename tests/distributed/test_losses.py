"""Global-batch losses over torch.distributed (gloo on localhost): every loss and every gradient
equals a single process on the concatenated batch (float64, issue 10's 1e-10), ring == allgather,
world size 1 == molphenix.ops, and errors raised on every rank.

Process start costs seconds, so each spawn runs many cases: one 2-rank run (unequal row counts
6 + 7) covers every loss in both modes, one 3-rank run (5 + 0 + 8 rows: unequal, one rank empty)
the sigmoid losses, one 1-rank run with a process group of size 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from _utils import assert_close

from ._launch import run_ranks

F64 = torch.float64
D, E = 8, 5
ISSUE_TOL = 1e-10  # issue 10: the global loss and all gradients within 1e-10 of one process

# (case name, "fn" | "module", loss name, options); fn cases call molphenix.distributed.s2l_loss /
# siglip_loss directly with t = exp(log t) and b leaves, module cases wrap create_loss(name, **kw).
CASES = [
    ("fn-s2l-soft-u", "fn", "s2l", {"u": True, "diagonal": "soft"}),
    ("fn-s2l-hard-u", "fn", "s2l", {"u": True, "diagonal": "hard"}),
    ("fn-s2l-soft-no-u", "fn", "s2l", {"u": False, "diagonal": "soft"}),
    ("fn-s2l-hard-no-u", "fn", "s2l", {"u": False, "diagonal": "hard"}),
    ("fn-siglip", "fn", "siglip", {}),
    ("s2l-input-soft", "module", "s2l", {"sim_space": "input", "init_t": 5.0, "init_b": -2.0}),
    ("s2l-input-hard", "module", "s2l", {"sim_space": "input", "diagonal": "hard", "init_t": 5.0,
                                         "init_b": -2.0}),
    ("s2l-projected", "module", "s2l", {"sim_space": "projected", "c": 2.0, "threshold": 0.3,
                                        "init_t": 5.0, "init_b": -2.0}),
    ("s2l-none", "module", "s2l", {"sim_space": "none", "init_t": 5.0, "init_b": -2.0}),
    ("s2l-unit", "module", "s2l", {"sim_space": "input", "u_norm": "unit", "unit_scale": 0.3, "init_t": 5.0,
                                   "init_b": -2.0}),
    ("s2l-cosine", "module", "s2l", {"sim_space": "input", "similarity": "cosine",
                                     "threshold": 0.5, "init_t": 5.0, "init_b": -2.0}),
    ("siglip", "module", "siglip", {"init_t": 5.0, "init_b": -2.0}),
    ("clip", "module", "clip", {"init_t": 10.0}),
    ("infoloob", "module", "infoloob", {}),
    ("infoloob-symmetric", "module", "infoloob", {"symmetric": True}),
    ("cloome", "module", "cloome", {}),
    ("cwcl-input", "module", "cwcl", {"sim_space": "input", "init_t": 10.0}),
    ("cwcl-projected", "module", "cwcl", {"sim_space": "projected", "c": 2.0, "threshold": 0.3,
                                          "init_t": 10.0}),
]
SIGMOID = {"s2l", "siglip"}
SUBGROUP_CASES = ("fn-s2l-soft-u", "s2l-projected", "clip")  # also run on a process subgroup


def _data(sizes, seed=0):
    """The global batch: unit p, q near p, u in four tight clusters (soft positives inside each)."""
    g = torch.Generator().manual_seed(seed)
    b = sum(sizes)
    p = F.normalize(torch.randn(b, D, generator=g, dtype=F64), dim=1)
    q = F.normalize(p + 0.7 * torch.randn(b, D, generator=g, dtype=F64), dim=1)
    centers = 0.6 * torch.randn(4, E, generator=g, dtype=F64)
    labels = torch.randint(0, 4, (b,), generator=g)
    u = centers[labels] + 0.05 * torch.randn(b, E, generator=g, dtype=F64)
    return p, q, u


def _evaluate(case, p_all, q_all, u_all, lo, hi, mode, group=None):
    """Loss, stats and gradients (local p rows, local q rows, loss parameters) for rows lo:hi.

    Without a process group (the parent) lo:hi is the whole batch: the single-process reference.
    """
    import molphenix.distributed as md
    from molphenix.losses import create_loss

    name, kind, loss_name, kw = case
    p = p_all[lo:hi].clone().requires_grad_(True)
    q = q_all[lo:hi].clone().requires_grad_(True)
    u = u_all[lo:hi].clone()
    stats = {}
    if kind == "fn":
        log_t = torch.tensor(math.log(5.0), dtype=F64, requires_grad=True)
        b = torch.tensor(-2.0, dtype=F64, requires_grad=True)
        if loss_name == "siglip":
            loss = md.siglip_loss(p, q, log_t.exp(), b, mode=mode, group=group)
        else:
            loss = md.s2l_loss(p, q, log_t.exp(), b, u if kw["u"] else None, mode=mode,
                               diagonal=kw["diagonal"], group=group)
        params = [log_t, b]
    else:
        lossmod = create_loss(loss_name, **kw).double()
        dl = md.DistributedLoss(lossmod, mode=mode, group=group)
        out = dl(p, q, u)
        loss, stats = out.loss, {k: float(v) for k, v in out.stats.items()}
        frac = dl.soft_positive_fraction(p, u)  # the statistic the trainer logs every few steps
        if frac is not None:
            stats["soft_pos_frac_hook"] = float(frac)
        params = [t for t in lossmod.parameters() if t.requires_grad]
    grads = torch.autograd.grad(loss, [p, q] + params)
    return {"loss": loss.detach(), "stats": stats, "grads": [g.detach() for g in grads]}


def _rank_body(sizes, case_names, modes, with_errors, subgroup=None):
    """Runs on every rank: each case in each mode, the byte count of one ring call, errors;
    with ``subgroup`` (ranks holding every row), the cases again on that process group."""
    import torch.distributed as dist

    import molphenix.distributed as md

    rank = dist.get_rank()
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    p_all, q_all, u_all = _data(sizes)
    out = {}
    for case in CASES:
        if case[0] not in case_names:
            continue
        for mode in (modes if case[2] in SIGMOID else ("ring",)):
            out[(case[0], mode)] = _evaluate(case, p_all, q_all, u_all, lo, hi, mode)
    with md.communication_counter() as counted:
        p = p_all[lo:hi].clone().requires_grad_(True)
        md.s2l_loss(p, q_all[lo:hi].clone().requires_grad_(True), 5.0, -2.0, u_all[lo:hi]).backward()
    out["bytes"] = dict(counted)
    # all_gather_with_grad itself: rank order, variable row counts, the local slice's gradient
    x = torch.arange(float(lo), float(hi), dtype=F64).repeat(3, 1).T.contiguous().requires_grad_(True)
    gathered = md.all_gather_with_grad(x)
    weights = torch.arange(float(sum(sizes) * 3), dtype=F64).reshape(-1, 3)
    (gathered * weights).sum().backward()
    out["gather"] = (gathered.detach(), x.grad.clone(), weights[lo:hi])
    if subgroup is not None:
        sub = dist.new_group(subgroup)  # every rank takes part in creating it
        if rank in subgroup:
            for case in CASES:
                if case[0] in SUBGROUP_CASES:
                    for mode in (modes if case[2] in SIGMOID else ("ring",)):
                        out[("subgroup", case[0], mode)] = _evaluate(case, p_all, q_all, u_all, lo, hi,
                                                                    mode, group=sub)
    if with_errors:
        errors = {}
        width = D + (1 if rank == 1 else 0)  # rank 1's embeddings are one wider
        pw = torch.zeros(hi - lo, width, dtype=F64)
        u_nan = u_all[lo:hi].clone()
        if rank == 1:
            u_nan[0, 0] = float("nan")  # only rank 1's u is bad: every rank must still raise
        for label, call in (
            ("s2l", lambda: md.s2l_loss(pw, pw, 5.0, -2.0)),
            ("siglip-allgather", lambda: md.siglip_loss(pw, pw, 5.0, -2.0, mode="allgather")),
            ("clip-module", lambda: md.DistributedLoss(md_create("clip"))(pw, pw)),
            ("s2l-module", lambda: md.DistributedLoss(md_create("s2l"))(pw, pw, u_all[lo:hi])),
            ("bias-differs", lambda: md.siglip_loss(p_all[lo:hi], q_all[lo:hi], 5.0, float(rank))),
            ("gather", lambda: md.all_gather_with_grad(pw)),
            ("nan-u", lambda: md.s2l_loss(p_all[lo:hi], q_all[lo:hi], 5.0, -2.0, u_nan)),
            ("scale-zero", lambda: md.s2l_loss(p_all[lo:hi], q_all[lo:hi], 0.0, -2.0, u_all[lo:hi])),
        ):
            try:
                call()
                errors[label] = None
            except ValueError as e:
                errors[label] = str(e)
        out["errors"] = errors
    return out


def md_create(name):
    from molphenix.losses import create_loss

    return create_loss(name).double()


def _check_against_reference(results, sizes, case_names, modes, prefix=()):
    p_all, q_all, u_all = _data(sizes)
    b = sum(sizes)
    for case in CASES:
        if case[0] not in case_names:
            continue
        ref = _evaluate(case, p_all, q_all, u_all, 0, b, "ring")  # no process group here
        for mode in (modes if case[2] in SIGMOID else ("ring",)):
            for rank, res in enumerate(results):
                if prefix + (case[0], mode) not in res:
                    continue
                got = res[prefix + (case[0], mode)]
                lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
                what = f"{case[0]} mode={mode} rank={rank}"
                # the same loss, bit for bit, on every rank
                assert torch.equal(got["loss"], results[0][prefix + (case[0], mode)]["loss"]), what
                assert_close(got["loss"], ref["loss"], dtype=F64, msg=f"{what}: loss")
                assert abs(float(got["loss"] - ref["loss"])) <= ISSUE_TOL, what
                expected = [ref["grads"][0][lo:hi], ref["grads"][1][lo:hi]] + ref["grads"][2:]
                assert len(got["grads"]) == len(expected), what
                for i, (g, e) in enumerate(zip(got["grads"], expected)):
                    assert_close(g, e, dtype=F64, kind="grad", msg=f"{what}: grad {i}")
                    if g.numel():
                        assert float((g - e).abs().max()) <= ISSUE_TOL, f"{what}: grad {i}"
                if mode == "allgather":  # ring == allgather (both also == one process, above)
                    ring = res[prefix + (case[0], "ring")]
                    assert_close(got["loss"], ring["loss"], dtype=F64, msg=f"{what}: ring vs allgather")
                    for i, (g, e) in enumerate(zip(got["grads"], ring["grads"])):
                        assert_close(g, e, dtype=F64, kind="grad", msg=f"{what}: ring vs allgather grad {i}")
                assert set(got["stats"]) == set(ref["stats"]), what
                for key, val in ref["stats"].items():
                    assert got["stats"][key] == pytest.approx(val, rel=1e-12, abs=1e-12), f"{what}: {key}"


def _expected_p2p_bytes(sizes, rank):
    """Ring point-to-point payload of one s2l_loss call with u and gradients (float64)."""
    w = len(sizes)
    blocks = sum(sizes[(rank - k) % w] for k in range(w - 1)) * (D + E)
    accumulators = sum(sizes[(rank - k) % w] for k in range(w)) * D
    return 8 * (blocks + accumulators)


def test_two_ranks_every_loss_matches_one_process():
    sizes = [6, 7]
    names = [c[0] for c in CASES]
    results = run_ranks(_rank_body, 2, args=(sizes, names, ("ring", "allgather"), True), timeout_s=180)
    _check_against_reference(results, sizes, names, ("ring", "allgather"))
    # the soft-label statistics are the global batch's, and there are soft positives to test
    assert results[0][("s2l-input-soft", "ring")]["stats"]["soft_pos_frac_hook"] > 0.0
    assert results[0][("s2l-unit", "ring")]["stats"]["soft_pos_frac_hook"] > 0.0
    for rank, res in enumerate(results):
        assert res["bytes"]["p2p_bytes"] == _expected_p2p_bytes(sizes, rank)
        errs = res["errors"]
        for label in ("s2l", "siglip-allgather", "clip-module", "s2l-module"):
            assert errs[label] is not None and "width" in errs[label], (rank, label, errs[label])
        assert errs["bias-differs"] is not None and "bias" in errs["bias-differs"]
        assert errs["gather"] is not None and "width" in errs["gather"]
        assert errs["nan-u"] is not None and ("NaN" in errs["nan-u"] if rank == 1 else "rank(s) [1]" in errs["nan-u"])
        assert errs["scale-zero"] is not None and "scale" in errs["scale-zero"]
        gathered, grad, expected_grad = res["gather"]
        assert torch.equal(gathered[:, 0], torch.arange(float(sum(sizes)), dtype=F64))
        assert torch.equal(grad, expected_grad)  # the local slice, not W times it


def test_three_ranks_unequal_and_empty_rows():
    sizes = [5, 0, 8]
    names = ["fn-s2l-soft-u", "fn-s2l-hard-no-u", "fn-siglip", "s2l-input-hard", "s2l-projected",
             "clip", "cwcl-input"]
    results = run_ranks(_rank_body, 3, args=(sizes, names, ("ring", "allgather"), False, [0, 2]),
                        timeout_s=180)
    _check_against_reference(results, sizes, names, ("ring", "allgather"))
    # a process group of ranks 0 and 2 (rank 1 holds no rows: the same global batch)
    key = ("subgroup", SUBGROUP_CASES[0], "ring")
    assert key in results[0] and key in results[2] and key not in results[1]
    _check_against_reference(results, sizes, SUBGROUP_CASES, ("ring", "allgather"), prefix=("subgroup",))
    for rank, res in enumerate(results):
        assert res["bytes"]["p2p_bytes"] == _expected_p2p_bytes(sizes, rank)


def _one_rank_body():
    import torch.distributed as dist

    import molphenix.distributed as md
    from molphenix import ops

    dist.init_process_group("gloo")  # init_from_env leaves WORLD_SIZE=1 alone: a group of one
    assert dist.get_world_size() == 1
    p_all, q_all, u_all = _data([9])
    same = []
    for fn, args, kw in ((md.s2l_loss, (u_all,), {"diagonal": "hard"}), (md.siglip_loss, (), {})):
        ref_fn = ops.s2l_loss if fn is md.s2l_loss else ops.siglip_loss
        for mode in ("ring", "allgather"):
            pa, pb = p_all.clone().requires_grad_(True), p_all.clone().requires_grad_(True)
            la = fn(pa, q_all, 5.0, -2.0, *args, mode=mode, **kw)
            lb = ref_fn(pb, q_all, 5.0, -2.0, *args, **kw)
            la.backward()
            lb.backward()
            same.append(torch.equal(la, lb) and torch.equal(pa.grad, pb.grad))
    dist.destroy_process_group()
    return same


def test_world_size_one_is_the_op():
    assert run_ranks(_one_rank_body, 1, timeout_s=120, init_group=False) == [[True] * 4]


def test_no_process_group_is_the_op_and_errors():
    import molphenix.distributed as md
    from molphenix import ops
    from molphenix.losses import create_loss

    p_all, q_all, u_all = _data([7])
    for kw in ({}, {"u_cols": u_all[:5], "diag_offset": 2, "normalizer": 3.0}):
        pa, pb = p_all.clone().requires_grad_(True), p_all.clone().requires_grad_(True)
        uq = u_all if "u_cols" not in kw else u_all
        qa = q_all if "u_cols" not in kw else q_all[:5]
        la = md.s2l_loss(pa, qa, 5.0, -2.0, uq, **kw)
        lb = ops.s2l_loss(pb, qa, 5.0, -2.0, uq, **kw)
        la.backward()
        lb.backward()
        assert torch.equal(la, lb) and torch.equal(pa.grad, pb.grad)
    assert torch.equal(md.siglip_loss(p_all, q_all, 5.0, -2.0), ops.siglip_loss(p_all, q_all, 5.0, -2.0))
    loss = create_loss("clip").double()
    assert torch.equal(md.DistributedLoss(loss)(p_all, q_all).loss, loss(p_all, q_all).loss)
    assert torch.equal(md.all_gather_with_grad(p_all), p_all)
    with pytest.raises(ValueError, match="mode"):
        md.s2l_loss(p_all, q_all, 5.0, -2.0, mode="tree")
    with pytest.raises(ValueError, match="mode"):
        md.siglip_loss(p_all, q_all, 5.0, -2.0, mode="")
    with pytest.raises(ValueError, match="mode"):
        md.DistributedLoss(loss, mode="broadcast")
    with pytest.raises(TypeError, match="loss"):
        md.DistributedLoss(torch.nn.Linear(2, 2))
