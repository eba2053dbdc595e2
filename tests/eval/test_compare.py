"""molphenix.eval.compare: per-query statistics, the cluster bootstrap, pooled summaries and paired
comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from molphenix.eval.compare import cluster_bootstrap_means, paired_compare, query_stats, summarize


def _rng(seed):
    from molphenix.eval.compare import _rng as make

    return make(seed, "t")


# ---------------------------------------------------------------------------------------------
# per-query statistics and chance levels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 22, 100, 101, 250])
def test_chance_is_the_mean_over_every_rank(n):
    """Under a random ranking every rank 0..N-1 is equally likely: chance = the mean over them."""
    ranks = np.arange(n)
    values, chance, ks = query_stats(ranks, n)
    for m in values:
        assert chance[m][0] == pytest.approx(values[m].mean(), rel=1e-12), m
    assert chance["mrr"][0] == pytest.approx(sum(1 / i for i in range(1, n + 1)) / n, rel=1e-12)
    assert ks["top1"][0] == max(1, math.ceil(n / 100)) and ks["top5"][0] == max(1, math.ceil(5 * n / 100))


def test_query_stats_values_per_query_n():
    values, chance, ks = query_stats(np.array([0, 1, 5, 21, 0]), np.array([22, 22, 23, 22, 300]))
    assert values["rank1"].tolist() == [1, 0, 0, 0, 1]
    assert values["top5"].tolist() == [1, 1, 0, 0, 1]  # k = 2, 2, 2, 2, 15
    assert ks["top5"].tolist() == [2, 2, 2, 2, 15] and ks["top1"].tolist() == [1, 1, 1, 1, 3]
    assert values["mrr"].tolist() == [1.0, 0.5, 1 / 6, 1 / 22, 1.0]
    assert values["mean_rank"].tolist() == [1, 2, 6, 22, 1]
    assert chance["mean_rank"].tolist() == [11.5, 11.5, 12.0, 11.5, 150.5]


@pytest.mark.parametrize("ranks,n,err,match", [
    ([0, 22], 22, ValueError, "rank 22 outside"),
    ([-1], 5, ValueError, "outside"),
    ([0.0], 5, TypeError, "integer"),
    ([0, 1], [5], ValueError, "n_candidates"),
    ([0], 0, ValueError, "n_candidates"),
])
def test_query_stats_errors(ranks, n, err, match):
    with pytest.raises(err, match=match):
        query_stats(np.asarray(ranks), np.asarray(n))


# ---------------------------------------------------------------------------------------------
# the cluster bootstrap
# ---------------------------------------------------------------------------------------------


def test_one_query_per_cluster_is_the_ordinary_bootstrap():
    """Labels in query order, one query each: the same generator gives exactly the ordinary
    bootstrap that draws query indices (rng.integers(0, Q, size=(chunk, Q)) per chunk)."""
    v = np.random.default_rng(0).random(37)
    labels = [f"m{i:03d}" for i in range(37)]
    got = cluster_bootstrap_means(v, labels, n_bootstrap=700, seed=5, tag="t", chunk=256)
    rng, want = _rng(5), []
    for s in range(0, 700, 256):
        b = min(256, 700 - s)
        want.append(v[rng.integers(0, 37, size=(b, 37))].mean(axis=1))
    np.testing.assert_allclose(got, np.concatenate(want), rtol=0, atol=1e-14)
    # None: every query its own cluster (the same thing)
    np.testing.assert_allclose(cluster_bootstrap_means(v, None, n_bootstrap=700, seed=5, tag="t"), got, atol=1e-14)


def test_equal_clusters_known_variance():
    """C clusters of m queries with one value each: a resample's mean is the mean of C draws of the
    cluster values, whose variance is var0(cluster values) / C exactly."""
    g = np.random.default_rng(1)
    c, m = 40, 3
    cval = g.normal(size=c)
    v = np.repeat(cval, m) + 0.0
    labels = np.repeat(np.arange(c), m)
    boots = cluster_bootstrap_means(v, labels, n_bootstrap=20000, seed=0)
    want_sd = np.sqrt(cval.var() / c)
    assert boots.mean() == pytest.approx(cval.mean(), abs=4 * want_sd / np.sqrt(20000))
    assert boots.std() == pytest.approx(want_sd, rel=0.03)
    # queries resampled one by one would claim sqrt(m) times less spread
    naive = cluster_bootstrap_means(v, None, n_bootstrap=20000, seed=0)
    assert naive.std() == pytest.approx(want_sd / np.sqrt(m), rel=0.05)


def test_unequal_cluster_sizes_are_a_ratio_of_sums():
    v = np.array([1.0, 1.0, 1.0, 0.0])  # cluster a: three ones, cluster b: one zero
    boots = cluster_bootstrap_means(v, ["a", "a", "a", "b"], n_bootstrap=4000, seed=2)
    # resamples: {a, a} -> 1, {b, b} -> 0, {a, b} -> 3/4 (queries, not clusters, are averaged)
    assert set(np.round(np.unique(boots), 12)) == {0.0, 0.75, 1.0}
    share = np.mean(np.isclose(boots, 0.75))
    assert share == pytest.approx(0.5, abs=0.03)


def test_cluster_bootstrap_errors():
    with pytest.raises(ValueError, match="no queries"):
        cluster_bootstrap_means(np.zeros(0), None)
    with pytest.raises(ValueError, match="clusters"):
        cluster_bootstrap_means(np.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="n_bootstrap"):
        cluster_bootstrap_means(np.zeros(3), None, n_bootstrap=0)
    with pytest.raises(ValueError, match="non-finite"):
        cluster_bootstrap_means(np.array([1.0, np.nan]), None)


def _clustered_hits(g, c, m, p_true, rho_sd):
    """c molecules x m concentrations of 0/1 hits; a molecule's hit rate varies around p_true
    (logit-normal), so its queries are correlated. Returns (hits [c*m], labels, true mean)."""
    z = g.normal(scale=rho_sd, size=c)
    base = math.log(p_true / (1 - p_true))
    p = 1 / (1 + np.exp(-(base + z)))
    hits = (g.random((c, m)) < p[:, None]).astype(float).ravel()
    return hits, np.repeat(np.arange(c), m)


def test_intervals_cover_the_truth_and_naive_ones_do_not():
    """200 simulated screens with strongly correlated queries per molecule: the cluster
    bootstrap's 95% interval covers the population mean about 95% of the time; resampling
    queries one by one covers it far less often."""
    g = np.random.default_rng(11)
    # the population mean of the logit-normal hit rate, by a large Monte Carlo draw
    z = np.random.default_rng(99).normal(scale=2.0, size=2_000_000)
    truth = float(np.mean(1 / (1 + np.exp(-(math.log(0.3 / 0.7) + z)))))
    cover = naive = 0
    reps = 200
    for r in range(reps):
        hits, labels = _clustered_hits(g, 60, 4, 0.3, 2.0)
        s = summarize(np.where(hits > 0, 0, 5).astype(np.int64), 22, labels, n_bootstrap=400, seed=r)
        lo, hi = s["ci95"]["rank1"]
        cover += lo <= truth <= hi
        b = cluster_bootstrap_means(hits, None, n_bootstrap=400, seed=r)
        nlo, nhi = np.percentile(b, [2.5, 97.5])
        naive += nlo <= truth <= nhi
    assert 0.88 <= cover / reps <= 0.99, cover / reps  # 0.935 with this seed (percentile intervals at 60 molecules)
    assert naive / reps < 0.85, naive / reps  # 0.795


# ---------------------------------------------------------------------------------------------
# summaries and paired comparisons
# ---------------------------------------------------------------------------------------------


def _table(ranks, n, mols, concs, active=None):
    t = {"molecule": np.asarray(mols, dtype=object), "concentration": np.asarray(concs, dtype=float),
         "rank": np.asarray(ranks, dtype=np.int64), "n_candidates": np.asarray(n, dtype=np.int64)}
    if active is not None:
        t["active"] = np.asarray(active, dtype=bool)
    return t


def test_summarize_counts_chance_and_flags():
    ranks = np.array([0, 0, 1, 3, 21, 0])
    n = np.array([22, 22, 22, 23, 22, 23])
    s = summarize(ranks, n, ["a", "a", "b", "b", "c", "d"], active=np.array([1, 0, 1, 1, 0, 0], bool),
                  n_bootstrap=200)
    assert s["n_queries"] == 6 and s["n_clusters"] == 4
    assert s["hits"] == {"rank1": 3, "top1": 3, "top5": 4}
    assert s["rank1"] == pytest.approx(0.5) and s["top1"] == s["rank1"]
    assert s["k"] == {"top1": [1, 1], "top5": [2, 2]} and s["same_as_rank1"] == ["top1"]
    assert s["chance"]["rank1"] == pytest.approx((4 / 22 + 2 / 23) / 6)
    assert s["hits_chance"]["rank1"] == pytest.approx(4 / 22 + 2 / 23)
    for m, (lo, hi) in s["ci95"].items():
        assert lo <= s[m] <= hi
    act = summarize(ranks, n, ["a", "a", "b", "b", "c", "d"], active=np.array([1, 0, 1, 1, 0, 0], bool),
                    subset="active", n_bootstrap=0)
    assert act["n_queries"] == 3 and act["hits"]["rank1"] == 1 and act["ci95"]["mrr"] is None
    big = summarize(np.zeros(3, np.int64), 250, None, n_bootstrap=0)
    assert big["same_as_rank1"] == [] and big["k"]["top1"] == [3, 3]


def test_paired_compare_known_case():
    g = np.random.default_rng(4)
    mols = np.repeat([f"m{i}" for i in range(30)], 3)
    concs = np.tile([0.1, 1.0, 10.0], 30)
    rb = g.integers(1, 22, size=90)
    ra = rb - 1  # A ranks every query one place higher than B
    a = _table(ra, 22, mols, concs, g.random(90) < 0.5)
    perm = g.permutation(90)  # B's table in another order: queries are matched by key
    b = _table(rb[perm], 22, mols[perm], concs[perm])
    c = paired_compare(a, b, n_bootstrap=500, seed=1, names=("A", "B"))
    mr = c["metrics"]["mean_rank"]
    assert mr["diff"] == pytest.approx(-1.0) and mr["diff_ci95"] == pytest.approx([-1.0, -1.0])
    mrr = c["metrics"]["mrr"]
    assert mrr["diff"] > 0 and mrr["diff_ci95"][0] > 0
    assert mrr["ratio"] == pytest.approx(mrr["a"] / mrr["b"]) and mrr["ratio_ci95"][0] > 1
    assert c["n_queries"] == 90 and c["n_clusters"] == 30 and (c["a"], c["b"]) == ("A", "B")
    assert mrr["chance"] == pytest.approx(sum(1 / i for i in range(1, 23)) / 22)
    # a method against itself: zero difference, ratio one, no spread
    same = paired_compare(a, a, n_bootstrap=200)
    for m, d in same["metrics"].items():
        assert d["diff"] == 0 and d["diff_ci95"] == [0.0, 0.0]
        if d["b"] > 0:
            assert d["ratio"] == 1 and d["ratio_ci95"] == [1.0, 1.0]
    act = paired_compare(a, b, subset="active", n_bootstrap=100)
    assert act["n_queries"] == int(a["active"].sum())


def test_paired_compare_errors():
    a = _table([0, 1, 2], 22, ["x", "x", "y"], [1.0, 10.0, 1.0], [True, False, True])
    with pytest.raises(ValueError, match=r"queries differ.*molecule 'y'"):
        paired_compare(a, _table([0, 1], 22, ["x", "x"], [1.0, 10.0]))
    with pytest.raises(ValueError, match="appears twice"):
        paired_compare(a, _table([0, 1, 2], 22, ["x", "x", "x"], [1.0, 1.0, 10.0]))
    with pytest.raises(ValueError, match="missing column 'n_candidates'"):
        paired_compare(a, {k: v for k, v in a.items() if k != "n_candidates"})
    with pytest.raises(ValueError, match="metrics: unknown metric"):
        paired_compare(a, a, metrics=["auc"])
    with pytest.raises(ValueError, match="active"):
        paired_compare({k: v for k, v in a.items() if k != "active"}, a, subset="active")
    none_active = dict(a, active=np.zeros(3, bool))
    with pytest.raises(ValueError, match="no active queries"):
        paired_compare(none_active, a, subset="active")
