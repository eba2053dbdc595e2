"""Input validation of every op (hypothesis): bad inputs raise TypeError/ValueError naming the
argument -- never another exception, never a crash -- and invariants hold on valid inputs."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molphenix.ops import (
    arctan_l2_similarity,
    retrieval_ranks,
    s2l_loss,
    siglip_loss,
    topk_retrieve,
)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
BACKENDS = [pytest.param("reference", id="reference"),
            pytest.param("cpu", marks=pytest.mark.requires_extension, id="cpu")]

dtypes = st.sampled_from([torch.float32, torch.float64])
small = st.integers(1, 9)


def _rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def expect_error(fn: Callable[[], Any], name: str) -> None:
    """``fn`` must raise TypeError or ValueError whose message names ``name``."""
    try:
        fn()
    except (TypeError, ValueError) as exc:
        assert name in str(exc), f"error does not name {name!r}: {type(exc).__name__}: {exc}"
        return
    except Exception as exc:  # noqa: BLE001 - any other exception type is the failure
        raise AssertionError(f"expected TypeError/ValueError naming {name!r}, got "
                             f"{type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"expected TypeError/ValueError naming {name!r}; nothing was raised")


# ---------------------------------------------------------------------------------------------
# bad embeddings (shared by all ops)
# ---------------------------------------------------------------------------------------------


def bad_matrices(t: torch.Tensor) -> List[Tuple[str, Any]]:
    """(label, corrupted version of a valid [rows, dim] float matrix)."""
    out: List[Tuple[str, Any]] = [
        ("1-D", t[0]),
        ("3-D", t.unsqueeze(0)),
        ("int64", (t * 10).to(torch.int64)),
        ("int32", (t * 10).to(torch.int32)),
        ("bool", t > 0),
        ("complex", t.to(torch.complex64)),
        ("zero width", t[:, :0]),
        ("list", t.tolist()),
        ("string", "abc"),
        ("None-like object", object()),
        ("numpy int", (t * 10).to(torch.int64).numpy()),
    ]
    for bad in (math.nan, math.inf, -math.inf):
        x = t.clone()
        x[-1, -1] = bad
        out.append((f"{bad}", x))
        out.append((f"numpy {bad}", x.numpy()))
    return out


BAD_MATRIX_LABELS = [lbl for lbl, _ in bad_matrices(torch.zeros(2, 2))]


# ---------------------------------------------------------------------------------------------
# s2l_loss / siglip_loss
# ---------------------------------------------------------------------------------------------


def s2l_base(b1, b2, d, e, dtype, seed):
    p = _rand((b1, d), dtype, seed)
    q = _rand((b2, d), dtype, seed + 1)
    u = _rand((b1, e), dtype, seed + 2)
    uc = _rand((b2, e), dtype, seed + 3)
    return dict(p=p, q=q, scale=10.0, bias=-10.0, u=u, u_cols=uc)


S2L_SCALAR_CASES = [
    ("scale", 0.0), ("scale", -1.0), ("scale", math.nan), ("scale", math.inf),
    ("scale", True), ("scale", torch.ones(2)), ("scale", torch.tensor(-3.0)), ("scale", None),
    ("bias", math.nan), ("bias", torch.zeros(1, 1)), ("bias", None),
    ("bias", torch.tensor(True)),
    ("c", 0.0), ("c", -0.3), ("c", math.nan), ("c", math.inf),
    ("threshold", 1.5), ("threshold", -1.01), ("threshold", math.nan),
    ("gamma", math.nan), ("gamma", math.inf),
    ("delta", math.nan), ("delta", -math.inf),
    ("diagonal", "diag"), ("diagonal", None), ("diagonal", 1),
    ("diag_offset", 1.5), ("diag_offset", "0"), ("diag_offset", True),
    ("normalizer", 0.0), ("normalizer", -2.0), ("normalizer", math.nan),
    ("num_threads", 0), ("num_threads", -2), ("num_threads", 1.5),
    ("backend", "gpu"), ("backend", None), ("backend", "CPU"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(b1=small, b2=small, d=small, e=small, dtype=dtypes, seed=st.integers(0, 1000),
       case=st.sampled_from(S2L_SCALAR_CASES))
def test_s2l_bad_scalars(backend, b1, b2, d, e, dtype, seed, case):
    args = s2l_base(b1, b2, d, e, dtype, seed)
    name, value = case
    kw = {name: value}
    if name != "backend":
        kw.setdefault("backend", backend)
    expect_error(lambda: s2l_loss(args["p"], args["q"], kw.pop("scale", 10.0),
                                  kw.pop("bias", -10.0), args["u"], u_cols=args["u_cols"], **kw),
                 name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["p", "q", "u", "u_cols"])
@pytest.mark.parametrize("label", BAD_MATRIX_LABELS)
@settings(max_examples=4, deadline=None)
@given(b1=small, b2=small, d=small, dtype=dtypes, seed=st.integers(0, 1000))
def test_s2l_bad_matrices(backend, which, label, b1, b2, d, dtype, seed):
    args = s2l_base(b1, b2, d, 3, dtype, seed)
    args[which] = dict(bad_matrices(args[which]))[label]
    expect_error(lambda: s2l_loss(args["p"], args["q"], 10.0, -10.0, args["u"],
                                  u_cols=args["u_cols"], backend=backend), which)


S2L_STRUCTURE_CASES = ["q width", "q dtype", "p empty", "q empty", "u rows", "u_cols rows",
                       "u_cols width", "u_cols without u", "rectangular without u_cols",
                       "u_cols dtype bool"]


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(b1=small, d=small, e=small, dtype=dtypes, seed=st.integers(0, 1000),
       case=st.sampled_from(S2L_STRUCTURE_CASES))
def test_s2l_bad_structure(backend, b1, d, e, dtype, seed, case):
    b2 = b1 + 1
    a = s2l_base(b1, b2, d, e, dtype, seed)
    p, q, u, uc = a["p"], a["q"], a["u"], a["u_cols"]
    name = case.split()[0]
    if case == "q width":
        q = _rand((b2, d + 1), dtype, seed)
    elif case == "q dtype":
        q = q.to(torch.float64 if dtype == torch.float32 else torch.float32)
    elif case == "p empty":
        p = p[:0]
    elif case == "q empty":
        q = q[:0]
    elif case == "u rows":
        u = _rand((b1 + 1, e), dtype, seed)
    elif case == "u_cols rows":
        uc = _rand((b2 + 2, e), dtype, seed)
    elif case == "u_cols width":
        uc = _rand((b2, e + 1), dtype, seed)
    elif case == "u_cols without u":
        u = None
    elif case == "rectangular without u_cols":
        uc, name = None, "u_cols"
    elif case == "u_cols dtype bool":
        uc = uc > 0
    expect_error(lambda: s2l_loss(p, q, 10.0, -10.0, u, u_cols=uc, backend=backend), name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["p", "q", "scale", "normalizer", "backend", "diag_offset"])
def test_siglip_validation(backend, case):
    p, q = _rand((4, 3), torch.float32, 0), _rand((5, 3), torch.float32, 1)
    kw: Dict[str, Any] = dict(backend=backend)
    scale = 10.0
    if case == "p":
        p = p.to(torch.int64)
    elif case == "q":
        q = q[:, :2]
    elif case == "scale":
        scale = -1.0
    elif case == "normalizer":
        kw["normalizer"] = 0
    elif case == "backend":
        kw["backend"] = "tpu"
    elif case == "diag_offset":
        kw["diag_offset"] = 0.5
    expect_error(lambda: siglip_loss(p, q, scale, 0.0, **kw), case)


# ---------------------------------------------------------------------------------------------
# arctan_l2_similarity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["a", "b"])
@pytest.mark.parametrize("label", BAD_MATRIX_LABELS)
def test_arctan_bad_matrices(backend, which, label):
    args = dict(a=_rand((4, 3), torch.float32, 0), b=_rand((5, 3), torch.float32, 1))
    args[which] = dict(bad_matrices(args[which]))[label]
    expect_error(lambda: arctan_l2_similarity(args["a"], args["b"], backend=backend), which)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(n=small, m=small, e=small, dtype=dtypes,
       case=st.sampled_from([("b", "width"), ("b", "dtype"), ("c", 0.0), ("c", -1.0),
                             ("c", math.nan), ("threshold", 2.0), ("threshold", -1.5),
                             ("threshold", math.inf), ("backend", "x"), ("num_threads", 0)]))
def test_arctan_bad_args(backend, n, m, e, dtype, case):
    a, b = _rand((n, e), dtype, 0), _rand((m, e), dtype, 1)
    name, value = case
    kw: Dict[str, Any] = dict(backend=backend)
    if name == "b":
        b = _rand((m, e + 1), dtype, 1) if value == "width" else b.to(
            torch.float64 if dtype == torch.float32 else torch.float32)
    else:
        kw[name] = value
    expect_error(lambda: arctan_l2_similarity(a, b, **kw), name)


# ---------------------------------------------------------------------------------------------
# retrieval_ranks / topk_retrieve
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["queries", "candidates"])
@pytest.mark.parametrize("label", BAD_MATRIX_LABELS)
def test_retrieval_bad_matrices(backend, which, label):
    args = dict(queries=_rand((4, 3), torch.float32, 0), candidates=_rand((6, 3), torch.float32, 1))
    args[which] = dict(bad_matrices(args[which]))[label]
    t = torch.tensor([0, 1, 2, 3])
    expect_error(lambda: retrieval_ranks(args["queries"], args["candidates"], t, backend=backend), which)
    expect_error(lambda: topk_retrieve(args["queries"], args["candidates"], 2, backend=backend), which)


RANK_CASES = [
    ("targets", "float"), ("targets", "bool"), ("targets", "2-D"), ("targets", "short"),
    ("targets", "too large"), ("targets", "below -1"), ("targets", "list of str"),
    ("target_scores", "missing"), ("target_scores", "int"), ("target_scores", "nan"),
    ("target_scores", "shape"), ("metric", "cos"), ("metric", None), ("backend", "x"),
    ("candidates", "empty"), ("candidates", "width"), ("candidates", "dtype"),
    ("num_threads", 0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(q=small, n=small, d=small, dtype=dtypes, seed=st.integers(0, 1000),
       case=st.sampled_from(RANK_CASES))
def test_ranks_bad_args(backend, q, n, d, dtype, seed, case):
    queries, cands = _rand((q, d), dtype, seed), _rand((n, d), dtype, seed + 1)
    targets = torch.randint(0, n, (q,), generator=torch.Generator().manual_seed(seed))
    kw: Dict[str, Any] = dict(backend=backend)
    name, how = case
    if name == "targets":
        targets = {"float": targets.double(), "bool": targets > 0, "2-D": targets[:, None],
                   "short": targets[:-1], "too large": targets + n, "below -1": targets - n - 2,
                   "list of str": ["a"] * q}[how]
    elif name == "target_scores":
        targets = targets.clone()
        targets[0] = -1
        scores = torch.zeros(q, dtype=torch.float64)
        if how == "int":
            kw["target_scores"] = scores.long()
        elif how == "nan":
            kw["target_scores"] = scores + math.nan
        elif how == "shape":
            kw["target_scores"] = torch.zeros(q + 1)
    elif name == "candidates":
        cands = {"empty": cands[:0], "width": _rand((n, d + 1), dtype, 0),
                 "dtype": cands.to(torch.float64 if dtype == torch.float32 else torch.float32)}[how]
    else:
        kw[name] = how
    expect_error(lambda: retrieval_ranks(queries, cands, targets, **kw), name)


TOPK_CASES = [("k", 0), ("k", -1), ("k", "n+1"), ("k", 1.5), ("k", True), ("k", "3"),
              ("fraction", 0.0), ("fraction", 1.5), ("fraction", -0.2), ("fraction", math.nan),
              ("k", "both"), ("k", "neither"), ("metric", "l2"),
              ("candidates", "empty"), ("backend", "fast"), ("num_threads", -1)]


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(q=small, n=small, d=small, dtype=dtypes, case=st.sampled_from(TOPK_CASES))
def test_topk_bad_args(backend, q, n, d, dtype, case):
    queries, cands = _rand((q, d), dtype, 0), _rand((n, d), dtype, 1)
    name, value = case
    k: Any = 1
    kw: Dict[str, Any] = dict(backend=backend)
    if name == "k":
        if value == "n+1":
            k = n + 1
        elif value == "both":
            kw["fraction"] = 0.5
        elif value == "neither":
            k = None
        else:
            k = value
    elif name == "fraction":
        k = None
        kw["fraction"] = value
    elif name == "candidates":
        cands = cands[:0]
    else:
        kw[name] = value
    expect_error(lambda: topk_retrieve(queries, cands, k, **kw), name)


@pytest.mark.requires_cuda
def test_mixed_devices():
    cpu, gpu = _rand((4, 3), torch.float32, 0), _rand((4, 3), torch.float32, 1).cuda()
    t = torch.tensor([0, 1, 2, 3])
    expect_error(lambda: s2l_loss(cpu, gpu, 10.0, -10.0), "q")
    expect_error(lambda: s2l_loss(gpu, gpu, 10.0, -10.0, cpu), "u")
    expect_error(lambda: s2l_loss(gpu, gpu, torch.tensor(10.0), -10.0), "scale")
    expect_error(lambda: arctan_l2_similarity(cpu, gpu), "b")
    expect_error(lambda: retrieval_ranks(gpu, cpu, t.cuda()), "candidates")
    expect_error(lambda: retrieval_ranks(gpu, gpu, t), "targets")
    expect_error(lambda: topk_retrieve(cpu, gpu, 2), "candidates")
    expect_error(lambda: s2l_loss(cpu, cpu, 10.0, -10.0, backend="cuda"), "backend")


# ---------------------------------------------------------------------------------------------
# invariants on valid inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(q=st.integers(0, 20), n=st.integers(1, 40), d=small, dtype=dtypes,
       seed=st.integers(0, 10_000), metric=st.sampled_from(["cosine", "dot", "arctan_l2"]),
       dup=st.booleans())
def test_rank_and_topk_invariants(backend, q, n, d, dtype, seed, metric, dup):
    queries, cands = _rand((q, d), dtype, seed), _rand((n, d), dtype, seed + 1)
    if dup and n > 1:
        cands[n // 2:] = cands[0]  # many exact ties
    targets = torch.randint(0, n, (q,), generator=torch.Generator().manual_seed(seed))
    ranks = retrieval_ranks(queries, cands, targets, metric=metric, backend=backend)
    assert ranks.shape == (q,) and ranks.dtype == torch.int64
    assert bool((ranks >= 0).all()) and bool((ranks <= n - 1).all())
    k = 1 + seed % n
    scores, idx = topk_retrieve(queries, cands, k, metric=metric, backend=backend)
    assert scores.shape == (q, k) and idx.shape == (q, k)
    assert bool((scores[:, 1:] <= scores[:, :-1]).all())
    assert bool(((idx >= 0) & (idx < n)).all())
    for row in idx.tolist():
        assert len(set(row)) == k
    # the best-listed candidate, taken as the target, has rank 0 unless tied
    if q:
        best = retrieval_ranks(queries, cands, idx[:, 0], metric=metric, backend=backend)
        full, _ = topk_retrieve(queries, cands, n, metric=metric, backend=backend)
        listed_ties = (full == full[:, :1]).sum(1) - 1
        assert bool((best <= listed_ties).all())


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(b1=small, b2=small, d=small, e=small, dtype=dtypes, seed=st.integers(0, 10_000),
       threshold=st.sampled_from([None, 0.0, 0.5, 0.75, 1.0]),
       scale=st.floats(1e-3, 100.0), bias=st.floats(-50.0, 50.0),
       diagonal=st.sampled_from(["soft", "hard"]), offset=st.integers(-10, 10))
def test_s2l_loss_finite_and_nonnegative(backend, b1, b2, d, e, dtype, seed, threshold, scale,
                                         bias, diagonal, offset):
    p, q = _rand((b1, d), dtype, seed), _rand((b2, d), dtype, seed + 1)
    p = torch.nn.functional.normalize(p, dim=1)
    q = torch.nn.functional.normalize(q, dim=1)
    u, uc = _rand((b1, e), dtype, seed + 2), _rand((b2, e), dtype, seed + 3)
    loss = s2l_loss(p, q, scale, bias, u, u_cols=uc, threshold=threshold, diagonal=diagonal,
                    diag_offset=offset, backend=backend)
    assert bool(torch.isfinite(loss))
    if threshold is not None:  # s in [0, 1]: both weights >= 0, a sum of softplus terms
        assert float(loss) >= -1e-6
    sig = siglip_loss(p, q, scale, bias, diag_offset=offset, backend=backend)
    assert bool(torch.isfinite(sig)) and float(sig) >= -1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(n=st.integers(0, 12), m=st.integers(0, 12), e=small, dtype=dtypes,
       seed=st.integers(0, 10_000), c=st.floats(1e-3, 10.0),
       threshold=st.one_of(st.none(), st.floats(-1.0, 1.0)))
def test_arctan_range(backend, n, m, e, dtype, seed, c, threshold):
    a, b = _rand((n, e), dtype, seed), _rand((m, e), dtype, seed + 1)
    s = arctan_l2_similarity(a, b, c=c, threshold=threshold, backend=backend)
    assert s.shape == (n, m) and s.dtype == dtype
    assert bool((s <= 1).all()) and bool((s >= -1).all())
    if threshold is not None:
        assert bool(((s == 0) | (s >= threshold - 1e-6)).all())


@pytest.mark.parametrize("name", ["scale", "bias", "c", "threshold", "gamma", "delta",
                                  "normalizer"])
def test_s2l_numeric_strings_rejected(name, backend="reference", text="0.5"):
    """A string is not a number: '10' must be a TypeError, as bool is (no silent float())."""
    p, q = _rand((3, 2), torch.float32, 0), _rand((3, 2), torch.float32, 1)
    u = _rand((3, 2), torch.float32, 2)
    kw: Dict[str, Any] = {"scale": 10.0, "bias": -10.0, name: text}
    scale, bias = kw.pop("scale"), kw.pop("bias")
    with pytest.raises(TypeError, match=name):
        s2l_loss(p, q, scale, bias, u, backend=backend, **kw)


def test_numeric_string_fraction_rejected(backend="reference"):
    q, c = _rand((3, 2), torch.float32, 0), _rand((5, 2), torch.float32, 1)
    with pytest.raises(TypeError, match="fraction"):
        topk_retrieve(q, c, fraction="0.5", backend=backend)
    with pytest.raises(TypeError, match="c"):
        arctan_l2_similarity(q, c, c="0.3", backend=backend)


@pytest.mark.parametrize("op", ["s2l_loss", "arctan_l2_similarity", "retrieval_ranks",
                                "topk_retrieve"])
def test_mixed_devices_without_gpu(op):
    """Mixed devices are testable on a CPU-only machine with the 'meta' device: the mix must be
    a ValueError naming the argument, not a RuntimeError from a NaN check reading meta data."""
    cpu = _rand((3, 2), torch.float32, 0)
    meta = torch.empty((3, 2), device="meta")
    t = torch.tensor([0, 1, 2])
    call, name = {
        "s2l_loss": (lambda: s2l_loss(cpu, meta, 10.0, -10.0), "q"),
        "arctan_l2_similarity": (lambda: arctan_l2_similarity(cpu, meta), "b"),
        "retrieval_ranks": (lambda: retrieval_ranks(cpu, meta, t), "candidates"),
        "topk_retrieve": (lambda: topk_retrieve(cpu, meta, 2), "candidates"),
    }[op]
    expect_error(call, name)


def test_check_finite_sum_screen_edge_cases():
    """The fast sum screen never passes a bad value and never rejects huge finite values."""
    from molphenix.ops._common import check_finite

    big = torch.full((4, 3), 3e38)  # the float32 sum overflows: the exact scan must accept it
    check_finite(big, "x")
    x = torch.zeros(2000, 700)
    x[1500, 3], x[1700, 5] = float("inf"), -float("inf")  # +inf + -inf = nan in the sum
    with pytest.raises(ValueError, match=r"x: contains NaN or Inf \(first at index \(1500, 3\)\)"):
        check_finite(x, "x")
