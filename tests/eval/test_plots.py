"""molphenix.eval.plots write non-empty PNGs (tiny data, fast) and pair sampling is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molphenix import ops
from molphenix.eval import evaluate_embeddings, plots

PNG = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def _u(n=80, e=6, seed=0):
    rng = np.random.default_rng(seed)
    act = rng.random(n) < 0.3
    u = 0.2 * rng.normal(size=(n, e))
    u[act] += rng.normal(size=(int(act.sum()), e))
    return u, act


def test_recall_vs_samples(tmp_path):
    curves = {"molphenix": [(0, 0.01), (500, 0.2), (1000, None), (1500, 0.3)],
              "clip": [(1000, 0.15), (0, 0.01)]}
    _check_png(plots.plot_recall_vs_samples(curves, tmp_path / "a" / "curve.png", chance=0.01,
                                            title="t"))
    with pytest.raises(ValueError, match="curves"):
        plots.plot_recall_vs_samples({}, tmp_path / "x.png")


def test_per_concentration(tmp_path):
    rng = np.random.default_rng(0)
    mols = [f"m{i}" for i in range(20)]
    cm = [m for m in mols for _ in (1.0, 10.0)]
    cc = [c for _ in mols for c in (1.0, 10.0)]
    cand = rng.normal(size=(40, 5))
    act = rng.random(40) < 0.5
    act[:2] = False  # some concentration may lack active queries: None values are drawn as gaps
    ms = {name: evaluate_embeddings(cand + s * rng.normal(size=cand.shape), cm, cc, act, cand,
                                    cm, cc, n_bootstrap=20)
          for name, s in (("molphenix", 0.5), ("ridge", 2.0))}
    _check_png(plots.plot_per_concentration(ms, tmp_path / "conc.png"))
    _check_png(plots.plot_per_concentration(ms, tmp_path / "conc5.png", key="top5", subset="all"))
    with pytest.raises(ValueError, match="subset"):
        plots.plot_per_concentration(ms, tmp_path / "x.png", subset="inactive")
    with pytest.raises(ValueError, match="per_concentration"):
        plots.plot_per_concentration({"a": {"all": {}}}, tmp_path / "x.png")


def test_similarity_pairs_and_cdfs(tmp_path):
    u, act = _u()
    s = plots.similarity_pair_samples(u, act, n_pairs=50, seed=1)
    assert set(s) == {"random", "active-active", "inactive-inactive", "active-inactive"}
    na, ni = int(act.sum()), int((~act).sum())
    assert len(s["random"]["cosine"]) == 50
    assert len(s["active-active"]["cosine"]) == min(50, na * (na - 1) // 2)
    for kind in s:
        assert s[kind]["cosine"].shape == s[kind]["arctan_l2"].shape
        assert np.all(np.abs(s[kind]["cosine"]) <= 1 + 1e-12)
        assert np.all(s[kind]["arctan_l2"] <= 1) and np.all(s[kind]["arctan_l2"] > -1)
    # every sampled (cosine, arctan) pair is the same pair of rows: check against the op
    full = ops.arctan_l2_similarity(torch.from_numpy(u), torch.from_numpy(u)).numpy()
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = unit @ unit.T
    iu, ju = np.triu_indices(len(u), 1)
    table = {round(float(a), 12): float(b) for a, b in zip(cos[iu, ju], full[iu, ju])}
    for c_val, a_val in zip(s["random"]["cosine"], s["random"]["arctan_l2"]):
        assert table[round(float(c_val), 12)] == pytest.approx(a_val, abs=1e-12)
    # inactive rows sit near the origin: arctan-L2 separates them from active-inactive pairs
    assert np.median(s["inactive-inactive"]["arctan_l2"]) > np.median(s["active-inactive"]["arctan_l2"])
    assert plots.similarity_pair_samples(u, act, n_pairs=50, seed=1)["random"]["cosine"].tolist() \
        == s["random"]["cosine"].tolist()
    _check_png(plots.plot_similarity_cdfs(u, act, tmp_path / "cdf.png", max_rows=40, n_pairs=200))
    with pytest.raises(ValueError, match="zero norm"):
        plots.similarity_pair_samples(np.zeros((3, 2)), np.ones(3, bool))
    with pytest.raises(TypeError, match="active"):
        plots.similarity_pair_samples(u, act.astype(float))


def test_embedding_projection(tmp_path):
    u, act = _u(n=120, e=9)
    _check_png(plots.plot_embedding_projection(torch.from_numpy(u), act, tmp_path / "pca.png",
                                               max_points=100, title="molecules"))
    coords, frac = plots.pca_2d(u)
    assert coords.shape == (120, 2) and 0 < frac[1] <= frac[0] <= 1
    _check_png(plots.plot_embedding_projection(u[:, :1], act, tmp_path / "pca1.png"))
    with pytest.raises(ValueError, match="active"):
        plots.plot_embedding_projection(u, act[:5], tmp_path / "x.png")


def test_metric_intervals(tmp_path):
    vals = {"a": (0.3, 0.2, 0.4), "b": (0.1, None, None)}
    p = plots.plot_metric_intervals(vals, tmp_path / "m.png", chance=0.15, title="t")
    assert p.stat().st_size > 0 and p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="values"):
        plots.plot_metric_intervals({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'a' has no finite value"):
        plots.plot_metric_intervals({"a": (float("nan"), None, None)}, tmp_path / "x.png")


def test_rank_cdfs(tmp_path):
    r = np.array([0, 1, 5, 21, 3])
    n = np.array([22, 22, 23, 22, 23])
    p = plots.plot_rank_cdfs({"a": (r, n), "b": (r[::-1].copy(), n)}, tmp_path / "r.png")
    assert p.stat().st_size > 0
    with pytest.raises(ValueError, match="outside"):
        plots.plot_rank_cdfs({"a": (np.array([22]), np.array([22]))}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one rank and one candidate count"):
        plots.plot_rank_cdfs({"a": (r, n[:2])}, tmp_path / "x.png")
