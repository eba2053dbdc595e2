"""molphenix.losses: every loss against a direct transcription of its formula (float64, small B),
gradients, inits and clamps, option validation, the soft-positive statistic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _utils import assert_close, quantized_clusters, randn, unit_rows
from molphenix import losses as L

B, D, E = 9, 5, 4


def case(seed: int = 0, b: int = B):
    p = unit_rows(b, D, seed=seed).requires_grad_()
    q = unit_rows(b, D, seed=seed + 1).requires_grad_()
    u = quantized_clusters(b, E, seed=seed + 2)
    return p, q, u


# ---------------------------------------------------------------------------------------------
# direct transcriptions of DESIGN.md section 2 (float64, explicit loops where they are clearer)
# ---------------------------------------------------------------------------------------------


def direct_soft_labels(u, c=0.3, threshold=0.75):
    n = u.shape[0]
    s = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            d2 = float(((u[i] - u[j]) ** 2).sum())
            st = 1.0 - (4.0 / math.pi) * math.atan(d2 / c)
            s[i, j] = st if (threshold is None or st >= threshold) else 0.0
        s[i, i] = 1.0
    return s


def direct_s2l(p, q, t, b, s, gamma=1.75, delta=0.75, diagonal="soft"):
    z = t * (p @ q.T) + b
    wp, wn = s.clone(), gamma - delta * s
    if diagonal == "hard":
        n = s.shape[0]
        wp[range(n), range(n)] = 1.0
        wn[range(n), range(n)] = 0.0
    return -(wp * F.logsigmoid(z) + wn * F.logsigmoid(-z)).sum() / p.shape[0]


def direct_siglip(p, q, t, b):
    z = t * (p @ q.T) + b
    y = 2.0 * torch.eye(p.shape[0], dtype=z.dtype) - 1.0
    return -F.logsigmoid(y * z).sum() / p.shape[0]


def direct_clip(p, q, t):
    z = t * (p @ q.T)
    n = z.shape[0]
    row = -sum(z[i, i] - torch.logsumexp(z[i], 0) for i in range(n)) / n
    col = -sum(z[i, i] - torch.logsumexp(z[:, i], 0) for i in range(n)) / n
    return 0.5 * (row + col)


def direct_infoloob(a, b, kappa):
    n = a.shape[0]
    k = kappa * (a @ b.T)
    terms = [-k[i, i] + torch.logsumexp(torch.stack([k[i, j] for j in range(n) if j != i]), 0)
             for i in range(n)]
    return torch.stack(terms).mean() / kappa


def direct_hop(state, stored, beta):
    out = []
    for i in range(state.shape[0]):
        w = torch.softmax(beta * (stored @ state[i]), 0)
        r = (w[:, None] * stored).sum(0)
        out.append(r / r.norm())
    return torch.stack(out)


def direct_cwcl(p, q, t, s):
    w = s.clamp_min(0.0)
    z = t * (p @ q.T)
    n = z.shape[0]
    row = sum(-(w[i] / w[i].sum() * torch.log_softmax(z[i], 0)).sum() for i in range(n)) / n
    col = sum(-(w[:, j] / w[:, j].sum() * torch.log_softmax(z[:, j], 0)).sum() for j in range(n)) / n
    return 0.5 * (row + col)


# ---------------------------------------------------------------------------------------------
# values and gradients against the transcriptions
# ---------------------------------------------------------------------------------------------


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=False)


@pytest.mark.parametrize("diagonal", ["soft", "hard"])
@pytest.mark.parametrize("threshold", [0.75, None])
def test_s2l_matches_formula(diagonal, threshold):
    p, q, u = case(1)
    loss = L.create_loss("s2l", diagonal=diagonal, threshold=threshold)
    out = loss(p, q, u)
    s = direct_soft_labels(u, threshold=threshold)
    assert int((s > 0).sum()) > B  # the case has real off-diagonal soft positives
    t = torch.exp(loss.logit_scale.clamp(0, math.log(100))).to(torch.float64)
    expected = direct_s2l(p, q, t, loss.logit_bias.to(torch.float64), s, diagonal=diagonal)
    assert_close(out.loss, expected, dtype=torch.float64, msg="s2l value")
    params = [p, q, loss.logit_scale, loss.logit_bias]
    got = grads(out.loss, params)
    exp = grads(expected, params)
    for g, e, nm in zip(got, exp, ["p", "q", "t'", "b"]):
        assert_close(g, e.to(g.dtype), dtype=torch.float64, kind="grad", msg=f"s2l grad {nm}")


def test_s2l_hard_and_soft_diagonal_differ():
    p, q, u = case(2)
    soft = L.create_loss("s2l", diagonal="soft")(p, q, u).loss
    hard = L.create_loss("s2l", diagonal="hard")(p, q, u).loss
    assert abs(float((soft - hard).detach())) > 1e-6


def test_s2l_identity_equals_siglip_exactly():
    """s = I (no u) and gamma = delta = 1: S2L is SigLIP (DESIGN.md section 2)."""
    p, q, _ = case(3)
    s2l = L.create_loss("s2l", sim_space="none", gamma=1.0, delta=1.0)
    sig = L.create_loss("siglip")
    a, b = s2l(p, q).loss, sig(p, q).loss
    assert_close(a, b, dtype=torch.float64, msg="s2l(I, 1, 1) vs siglip")
    eye = torch.eye(B, dtype=torch.float64)
    assert_close(a, direct_s2l(p, q, 10.0, -10.0, eye, gamma=1.0, delta=1.0), dtype=torch.float64)


def test_s2l_projected_uses_detached_p():
    p, q, _ = case(4)
    p = F.normalize(p.detach() + 0.0, dim=1)
    p = torch.cat([p[:4], p[:4] + 1e-3, p[8:]], 0)  # near-duplicate rows: soft positives in p-space
    p = F.normalize(p, dim=1).requires_grad_()
    loss = L.create_loss("s2l", sim_space="projected")
    assert not loss.needs_u
    out = loss(p, q, u=torch.full((B, E), float("nan")))  # a given u is ignored
    s = direct_soft_labels(p.detach())
    expected = direct_s2l(p, q, 10.0, -10.0, s)
    assert_close(out.loss, expected, dtype=torch.float64)
    assert "soft_pos_frac" not in out.stats  # not computed in the step (a second similarity pass)
    assert float(loss.soft_positive_fraction(p, None)) == pytest.approx(8 / (B * (B - 1)))
    # u = p.detach(): the gradient is the fixed-label gradient (no path through the labels)
    assert_close(grads(out.loss, [p])[0], grads(expected, [p])[0], dtype=torch.float64, kind="grad")


def test_siglip_matches_formula():
    p, q, _ = case(5)
    loss = L.create_loss("siglip")
    out = loss(p, q)
    expected = direct_siglip(p, q, torch.exp(loss.logit_scale).double(), loss.logit_bias.double())
    assert_close(out.loss, expected, dtype=torch.float64)
    params = [p, q, loss.logit_scale, loss.logit_bias]
    for g, e in zip(grads(out.loss, params), grads(expected, params)):
        assert_close(g, e.to(g.dtype), dtype=torch.float64, kind="grad")


def test_clip_matches_formula():
    p, q, _ = case(6)
    loss = L.create_loss("clip")
    out = loss(p, q)
    expected = direct_clip(p, q, torch.exp(loss.logit_scale).double())
    assert_close(out.loss, expected, dtype=torch.float64)
    params = [p, q, loss.logit_scale]
    for g, e in zip(grads(out.loss, params), grads(expected, params)):
        assert_close(g, e.to(g.dtype), dtype=torch.float64, kind="grad")


@pytest.mark.parametrize("symmetric", [False, True])
def test_infoloob_matches_formula(symmetric):
    p, q, _ = case(7)
    out = L.create_loss("infoloob", symmetric=symmetric)(p, q)
    expected = direct_infoloob(p, q, 14.3)
    if symmetric:
        expected = expected + direct_infoloob(q, p, 14.3)
    assert_close(out.loss, expected, dtype=torch.float64)
    assert out.stats == {"t": 14.3}
    for g, e in zip(grads(out.loss, [p, q]), grads(expected, [p, q])):
        assert_close(g, e, dtype=torch.float64, kind="grad")


def test_cloome_matches_formula():
    p, q, _ = case(8)
    out = L.create_loss("cloome")(p, q)
    x, y = p, q
    expected = (direct_infoloob(direct_hop(x, x, 14.3), direct_hop(y, x, 14.3), 14.3)
                + direct_infoloob(direct_hop(y, y, 14.3), direct_hop(x, y, 14.3), 14.3))
    assert_close(out.loss, expected, dtype=torch.float64)
    for g, e in zip(grads(out.loss, [p, q]), grads(expected, [p, q])):
        assert_close(g, e, dtype=torch.float64, kind="grad")


def test_cwcl_matches_formula():
    p, q, u = case(9)
    loss = L.create_loss("cwcl")
    out = loss(p, q, u)
    s = direct_soft_labels(u)
    expected = direct_cwcl(p, q, torch.exp(loss.logit_scale).double(), s)
    assert_close(out.loss, expected, dtype=torch.float64)
    params = [p, q, loss.logit_scale]
    for g, e in zip(grads(out.loss, params), grads(expected, params)):
        assert_close(g, e.to(g.dtype), dtype=torch.float64, kind="grad")
    # identity targets reduce CWCL to CLIP
    far = torch.arange(B, dtype=torch.float64)[:, None] * 10.0 * torch.ones(B, E, dtype=torch.float64)
    assert_close(loss(p, q, far).loss, direct_clip(p, q, torch.exp(loss.logit_scale).double()),
                 dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# gradients flow, float32 path, inits, clamps
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", L.LOSSES)
def test_gradients_flow_float32(name):
    p = unit_rows(33, 16, seed=10, dtype=torch.float32).requires_grad_()
    q = unit_rows(33, 16, seed=11, dtype=torch.float32).requires_grad_()
    u = quantized_clusters(33, 6, seed=12, dtype=torch.float32)
    loss = L.create_loss(name)
    out = loss(p, q, u if loss.needs_u else None)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    # stats: constants, or detached 0-dim tensors (read by the trainer every few steps: no sync here)
    for v in out.stats.values():
        assert isinstance(v, float) or (isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad)
    assert "t" in out.stats
    frac = loss.soft_positive_fraction(p, u if loss.needs_u else None)
    assert (frac is None) == (name not in ("s2l", "cwcl"))
    out.loss.backward()
    for t in [p, q, *loss.parameters()]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and float(t.grad.abs().sum()) > 0


def test_inits():
    for name in ("s2l", "siglip"):
        loss = L.create_loss(name)
        assert loss.logit_scale.item() == pytest.approx(math.log(10.0))
        assert loss.logit_bias.item() == -10.0
    for name in ("clip", "cwcl"):
        assert torch.exp(L.create_loss(name).logit_scale).item() == pytest.approx(1 / 0.07, rel=1e-6)
    for name in ("infoloob", "cloome"):
        assert list(L.create_loss(name).parameters()) == []
    assert L.create_loss("cloome").beta == 14.3 and L.create_loss("cloome").kappa == 14.3


@pytest.mark.parametrize("name", ["s2l", "siglip"])
def test_sigmoid_clamps(name):
    p, q, u = case(13)
    loss = L.create_loss(name)
    with torch.no_grad():
        loss.logit_scale.fill_(7.0)
    out = loss(p, q, u)
    assert out.stats["t"] == pytest.approx(100.0)
    out.loss.backward()
    assert float(loss.logit_scale.grad) == 0.0  # clamped in forward: no gradient beyond the bound
    assert float(loss.logit_bias.grad) != 0.0
    with torch.no_grad():
        loss.logit_scale.fill_(-3.0)
    assert loss(p, q, u).stats["t"] == pytest.approx(1.0)
    loss.clamp_parameters_()
    assert loss.logit_scale.item() == 0.0
    with torch.no_grad():
        loss.logit_scale.fill_(9.0)
    loss.clamp_parameters_()
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))


@pytest.mark.parametrize("name", ["clip", "cwcl"])
def test_softmax_temperature_clamp(name):
    p, q, u = case(14)
    loss = L.create_loss(name)
    with torch.no_grad():
        loss.logit_scale.fill_(8.0)
    out = loss(p, q, u)
    assert out.stats["t"] == pytest.approx(100.0)
    out.loss.backward()
    assert float(loss.logit_scale.grad) == 0.0
    loss.clamp_parameters_()
    assert loss.logit_scale.item() == pytest.approx(math.log(100.0))


# ---------------------------------------------------------------------------------------------
# the soft-positive statistic
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s2l", "cwcl"])
def test_soft_pos_frac_is_exact_off_diagonal_fraction(name):
    p, q, u = case(15, b=24)
    s = direct_soft_labels(u)
    n = s.shape[0]
    expected = float(((s > 0).sum() - n)) / (n * (n - 1))
    assert 0 < expected < 1
    loss = L.create_loss(name)
    out = loss(p, q, u)
    assert float(loss.soft_positive_fraction(p, u)) == pytest.approx(expected, abs=1e-12)
    if name == "cwcl":  # CWCL has the labels at hand: the statistic comes with the loss, free
        assert float(out.stats["soft_pos_frac"]) == pytest.approx(expected, abs=1e-12)


def test_soft_pos_frac_subsamples_first_rows():
    u = quantized_clusters(40, E, seed=16)
    s = direct_soft_labels(u[:10])
    expected = float(((s > 0).sum() - 10)) / 90
    assert L.soft_positive_fraction(u, max_rows=10) == pytest.approx(expected, abs=1e-12)
    assert L.soft_positive_fraction(u[:1]) == 0.0
    p = unit_rows(40, D, seed=17)
    loss = L.create_loss("s2l", stats_rows=10)
    assert float(loss.soft_positive_fraction(p, u)) == pytest.approx(expected, abs=1e-12)


def test_s2l_step_runs_no_similarity_kernel_for_the_statistic(monkeypatch):
    import molphenix.ops as ops

    calls = []
    real = ops.arctan_l2_similarity
    monkeypatch.setattr(ops, "arctan_l2_similarity", lambda *a, **k: calls.append(1) or real(*a, **k))
    p, q, u = case(18)
    loss = L.create_loss("s2l")
    out = loss(p, q, u)
    assert not calls and "soft_pos_frac" not in out.stats
    assert 0 < float(loss.soft_positive_fraction(p, u)) < 1 and len(calls) == 1


# ---------------------------------------------------------------------------------------------
# validation and the factory
# ---------------------------------------------------------------------------------------------


def test_needs_u_flags():
    assert L.create_loss("s2l").needs_u and L.create_loss("cwcl").needs_u
    assert not L.create_loss("s2l", sim_space="projected").needs_u
    assert not L.create_loss("cwcl", sim_space="projected").needs_u
    for name in ("siglip", "clip", "infoloob", "cloome"):
        assert not L.create_loss(name).needs_u


@pytest.mark.parametrize("name", ["s2l", "cwcl"])
def test_missing_u_raises(name):
    p, q, _ = case(18)
    with pytest.raises(ValueError, match="u: required"):
        L.create_loss(name)(p, q)


@pytest.mark.parametrize("name", ["infoloob", "cloome"])
def test_infoloob_needs_two_pairs(name):
    p, q, _ = case(19, b=1)
    with pytest.raises(ValueError, match="at least 2"):
        L.create_loss(name)(p, q)


def test_shape_errors():
    p, q, u = case(20)
    for name in L.LOSSES:
        loss = L.create_loss(name)
        with pytest.raises(ValueError, match="same shape"):
            loss(p, q[:-1], u)
        with pytest.raises(ValueError):
            loss(p[0], q[0], u)
    with pytest.raises(ValueError, match="u: expected"):
        L.create_loss("s2l")(p, q, u[:-1])


def test_create_loss_errors():
    with pytest.raises(ValueError, match="unknown loss 'foo'"):
        L.create_loss("foo")
    with pytest.raises(ValueError, match="^gamma: not an option of the 'clip' loss"):
        L.create_loss("clip", gamma=1.0)
    bad = [("s2l", "diagonal", "diag"), ("s2l", "sim_space", "output"), ("s2l", "c", 0.0),
           ("s2l", "threshold", 1.5), ("s2l", "init_t", 1000.0), ("s2l", "backend", "tpu"),
           ("cwcl", "sim_space", "none"), ("clip", "init_t", -1.0), ("infoloob", "kappa", 0.0),
           ("cloome", "beta", -2.0), ("s2l", "stats_rows", 1)]
    for name, key, value in bad:
        with pytest.raises(ValueError, match=f"^{key}:"):
            L.create_loss(name, **{key: value})


def test_state_dict_round_trip():
    a = L.create_loss("s2l")
    with torch.no_grad():
        a.logit_scale.fill_(1.5)
        a.logit_bias.fill_(-3.0)
    b = L.create_loss("s2l")
    b.load_state_dict(a.state_dict())
    p, q, u = case(21)
    assert a(p, q, u).loss.item() == b(p, q, u).loss.item()


def test_random_data_float32_reference_backend_agrees():
    p = F.normalize(randn((50, 8), seed=22, dtype=torch.float32), dim=1)
    q = F.normalize(randn((50, 8), seed=23, dtype=torch.float32), dim=1)
    u = quantized_clusters(50, 5, seed=24, dtype=torch.float32)
    a = L.create_loss("s2l")(p, q, u).loss
    b = L.create_loss("s2l", backend="reference")(p, q, u).loss
    assert_close(a, b, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# the cosine soft-label ablation
# ---------------------------------------------------------------------------------------------


def direct_cosine_labels(u, threshold=0.75):
    n = u.shape[0]
    s = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            cos = float(u[i] @ u[j]) / (float(u[i].norm()) * float(u[j].norm()))
            s[i, j] = cos if (threshold is None or cos >= threshold) else 0.0
        s[i, i] = 1.0
    return s


def cosine_case(seed):
    p, q, _ = case(seed)
    base = randn((3, E), seed=seed + 5)
    u = base[torch.arange(B) % 3] + 0.3 * randn((B, E), seed=seed + 6)  # 3 direction clusters
    return p, q, u


@pytest.mark.parametrize("diagonal", ["soft", "hard"])
def test_s2l_cosine_matches_formula(diagonal):
    p, q, u = cosine_case(30)
    loss = L.create_loss("s2l", similarity="cosine", diagonal=diagonal)
    out = loss(p, q, u)
    s = direct_cosine_labels(u)
    n_pos = int((s > 0).sum()) - B
    assert 0 < n_pos < B * (B - 1)
    expected = direct_s2l(p, q, torch.exp(loss.logit_scale).double(), loss.logit_bias.double(), s,
                          diagonal=diagonal)
    assert_close(out.loss, expected, dtype=torch.float64)
    assert float(out.stats["soft_pos_frac"]) == pytest.approx(n_pos / (B * (B - 1)), abs=1e-12)
    params = [p, q, loss.logit_scale, loss.logit_bias]
    for g, e in zip(grads(out.loss, params), grads(expected, params)):
        assert_close(g, e.to(g.dtype), dtype=torch.float64, kind="grad")
    # scale-invariant: dividing u by sigma changes nothing
    assert_close(loss(p, q, u / 7.0).loss, out.loss, dtype=torch.float64)


def test_cwcl_cosine_matches_formula():
    p, q, u = cosine_case(31)
    loss = L.create_loss("cwcl", similarity="cosine")
    out = loss(p, q, u)
    expected = direct_cwcl(p, q, torch.exp(loss.logit_scale).double(), direct_cosine_labels(u))
    assert_close(out.loss, expected, dtype=torch.float64)


def test_bad_similarity():
    for name in ("s2l", "cwcl"):
        with pytest.raises(ValueError, match="^similarity:"):
            L.create_loss(name, similarity="dot")
