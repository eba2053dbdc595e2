"""The loss registry, and S2L's ``u_norm="unit"`` option: the demo's cosine-label ablation,
which reproduces the loss the demo used to patch in (``UnitS2LLoss``) bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import molphenix
import molphenix.losses as L

BACKENDS = ["reference"] + (["cpu"] if molphenix.has_extension() else [])


# ---------------------------------------------------------------------------------------------
# frozen copies of what the demo used before the option existed (molphenix/demo/_cosine.py at
# a4fca65): UnitS2LLoss.forward = S2LLoss.forward on normalize(u.detach().float()) / unit_scale,
# and fit_unit_scale. They must not be "fixed": they are the reference the option is held to.
# ---------------------------------------------------------------------------------------------


def frozen_unit_s2l_loss(p, q, logit_scale, logit_bias, u, unit_scale, *, diagonal, backend):
    from molphenix.ops import s2l_loss

    us = F.normalize(u.detach().float(), dim=1) / unit_scale
    t = torch.exp(torch.clamp(logit_scale, 0.0, math.log(100.0)))
    return s2l_loss(p, q, t, logit_bias, us.detach(), c=0.3, threshold=0.75, gamma=1.75, delta=0.75,
                    diagonal=diagonal, backend=backend)


def frozen_fit_unit_scale(x, target_fraction, *, seed=0):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1.0)
    return float(L.fit_similarity_scale(xn.astype(np.float32), target_fraction, seed=seed))


def _batch(seed, b=48, d=16, e=24):
    g = torch.Generator().manual_seed(seed)
    p = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()
    q = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()
    # clustered rows of different norms: soft positives exist, and normalising changes them
    centers = torch.randn(4, e, generator=g)
    u = centers[torch.randint(0, 4, (b,), generator=g)] * torch.rand(b, 1, generator=g) * 5
    u = u + 0.05 * torch.randn(b, e, generator=g)
    return p, q, u


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("diagonal", ["soft", "hard"])
def test_unit_u_norm_reproduces_the_frozen_loss_bit_for_bit(backend, diagonal):
    p, q, u = _batch(1)
    unit_scale = frozen_fit_unit_scale(u.numpy(), 0.05, seed=3)
    assert unit_scale == L.fit_unit_scale(u.numpy(), 0.05, seed=3)
    loss = L.create_loss("s2l", u_norm="unit", unit_scale=unit_scale, diagonal=diagonal, backend=backend)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(7.0))
        loss.logit_bias.fill_(-4.0)
    got = loss(p, q, u / 3.0).loss  # the trainer passes x / sigma: the normalisation removes sigma
    params = [p, q, loss.logit_scale, loss.logit_bias]
    g_got = torch.autograd.grad(got, params)
    want = frozen_unit_s2l_loss(p, q, loss.logit_scale, loss.logit_bias, u / 3.0, unit_scale,
                                diagonal=diagonal, backend=backend)
    g_want = torch.autograd.grad(want, params)
    assert torch.equal(got, want)
    for a, b in zip(g_got, g_want):
        assert torch.equal(a, b)
    # the labels do change: unit rows differ from the raw ones, and from cosine labels
    plain = L.create_loss("s2l", diagonal=diagonal, backend=backend)
    cosine = L.create_loss("s2l", similarity="cosine", diagonal=diagonal, backend=backend)
    for other in (plain, cosine):
        other.load_state_dict(loss.state_dict())
        assert not torch.equal(other(p, q, u / 3.0).loss, got)


def test_unit_u_norm_options_are_checked():
    with pytest.raises(ValueError, match="^unit_scale:"):
        L.create_loss("s2l", u_norm="unit")
    with pytest.raises(ValueError, match="^unit_scale:"):
        L.create_loss("s2l", u_norm="unit", unit_scale=0.0)
    with pytest.raises(ValueError, match="^unit_scale:"):
        L.create_loss("s2l", unit_scale=0.5)
    with pytest.raises(ValueError, match="^u_norm:"):
        L.create_loss("s2l", u_norm="l2")
    with pytest.raises(ValueError, match="^u_norm:"):
        L.create_loss("s2l", u_norm="unit", unit_scale=0.5, sim_space="projected")


def test_c_and_threshold_have_one_range_everywhere():
    # DESIGN.md: c > 0, threshold in [-1, 1]; every loss and the scale fit say so the same way
    for name in ("s2l", "cwcl"):
        for t in (-1.0, 1.0, None):
            L.create_loss(name, threshold=t)
        for bad in (1.5, -1.01, math.nan):
            with pytest.raises(ValueError, match=r"^threshold: must be in \[-1, 1\]"):
                L.create_loss(name, threshold=bad)
        for bad in (0.0, -1.0, math.inf):
            with pytest.raises(ValueError, match=r"^c: must be a finite number > 0"):
                L.create_loss(name, c=bad)
    with pytest.raises(ValueError, match=r"^threshold: must be in \[-1, 1\]"):
        L.soft_label_window(0.3, 1.5)
    with pytest.raises(ValueError, match="^threshold: the soft-label window is empty at 1"):
        L.soft_label_window(0.3, 1.0)
    with pytest.raises(ValueError, match=r"^c: must be a finite number > 0"):
        L.fit_similarity_scale(np.random.default_rng(0).normal(size=(10, 3)), 0.1, c=0.0)


class _Dot(L.ContrastiveLoss):
    name = "dot-test"

    def __init__(self, *, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, p, q, u=None):
        return L.LossOutput(-(p * q).sum(1).mean() * self.weight, {"t": 1.0})


def test_register_loss():
    try:
        L.register_loss("dot-test", _Dot)
        assert "dot-test" in L.available_losses() and L.LOSSES == L.available_losses()[:6]
        loss = L.create_loss("dot-test", weight=2.0)
        assert isinstance(loss, _Dot) and loss.weight == 2.0
        with pytest.raises(ValueError, match="^gamma: not an option of the 'dot-test' loss"):
            L.create_loss("dot-test", gamma=1.0)
        with pytest.raises(ValueError, match="already registered"):
            L.register_loss("dot-test", _Dot)
        L.register_loss("dot-test", lambda **kw: object(), replace=True)
        with pytest.raises(TypeError, match="not a ContrastiveLoss"):
            L.create_loss("dot-test")
        assert L.loss_entry("s2l").uses_similarity_inputs and not L.loss_entry("clip").uses_similarity_inputs
    finally:
        from molphenix.losses import registry

        registry._REGISTRY.pop("dot-test", None)
    with pytest.raises(ValueError, match="unknown loss 'dot-test'"):
        L.create_loss("dot-test")


def test_similarity_scale_hook():
    x = np.random.default_rng(0).normal(size=(300, 6))
    s2l = L.create_loss("s2l", threshold=0.5, c=1.0)
    assert s2l.similarity_scale(x, 0.05, seed=2) == L.fit_similarity_scale(x, 0.05, c=1.0, threshold=0.5, seed=2)
    # no threshold: the scale of the default window (what the trainer did before the hook)
    none = L.create_loss("s2l", threshold=None)
    assert none.similarity_scale(x, 0.05, seed=2) == L.fit_similarity_scale(x, 0.05, seed=2)
    for loss in (L.create_loss("s2l", sim_space="projected"), L.create_loss("siglip"), L.create_loss("clip")):
        assert loss.similarity_scale(x, 0.05) is None
    assert L.create_loss("cwcl").similarity_scale(x, 0.05, seed=2) == L.fit_similarity_scale(x, 0.05, seed=2)
