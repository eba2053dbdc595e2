"""molphenix.eval metrics against a direct numpy transcription of DESIGN.md section 2."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molphenix import ops
from molphenix.eval import (
    SCHEMA_VERSION,
    average_queries,
    concentration_key,
    evaluate_embeddings,
    fraction_key,
    metrics_from_ranks,
    query_targets,
    read_metrics,
    read_query_ranks,
    write_metrics,
    write_query_ranks,
)

CONCS = (0.25, 1.0, 10.0)


# ---------------------------------------------------------------------------------------------
# the transcription
# ---------------------------------------------------------------------------------------------


def bf_scores(q: np.ndarray, c: np.ndarray, metric: str) -> np.ndarray:
    q, c = q.astype(np.float64), c.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    if metric in ("cosine", "dot"):
        return q @ c.T
    d2 = ((q[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return -d2  # arctan_l2 ranks by squared distance, ascending


def bf_ranks(q, c, targets, metric):
    s = bf_scores(q, c, metric)
    out = []
    for i, t in enumerate(targets):
        ge = s[i] >= s[i, t]
        ge[t] = False
        out.append(int(ge.sum()))
    return np.array(out)


def bf_group(ranks, n, fractions=(0.01, 0.05)):
    res = {"n_queries": len(ranks)}
    for f in fractions:
        k = max(1, math.ceil(round(f * 100) * n / 100))
        key = f"top{round(f * 100)}"
        res[key] = float(np.mean(ranks < k)) if len(ranks) else None
        res.setdefault("chance", {})[key] = k / n
    res["mean_rank"] = float(np.mean(ranks + 1)) if len(ranks) else None
    res["mrr"] = float(np.mean(1.0 / (ranks + 1))) if len(ranks) else None
    return res


def assert_group(got, want):
    assert got["n_queries"] == want["n_queries"]
    for key in ("top1", "top5", "mean_rank", "mrr"):
        if want[key] is None:
            assert got[key] is None
        else:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=0)
    assert got["chance"] == want["chance"]


def pair_data(n_mol=40, d=8, seed=0, dup=True, noise=1.0):
    rng = np.random.default_rng(seed)
    mols = [f"m{i}" for i in range(n_mol)]
    cm = [m for m in mols for _ in CONCS]
    cc = np.array([c for _ in mols for c in CONCS])
    cand = rng.normal(size=(len(cm), d))
    if dup:  # exact duplicate candidate rows: exact ties, which count against the query
        cand[1::7] = cand[0::7][: len(cand[1::7])]
    q = cand + noise * rng.normal(size=cand.shape)
    perm = rng.permutation(len(cm))  # queries in another order than candidates
    qm = [cm[i] for i in perm]
    return dict(query_emb=q[perm], query_molecule=qm, query_conc=cc[perm],
                query_active=rng.random(len(cm)) < 0.3, cand_emb=cand, cand_molecule=cm,
                cand_conc=cc), perm


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "dot", "arctan_l2"])
def test_pair_matches_bruteforce(metric):
    data, perm = pair_data()
    m, table = evaluate_embeddings(**data, metric=metric, n_bootstrap=50, return_ranks=True)
    n = len(data["cand_molecule"])
    np.testing.assert_array_equal(table["target"], perm)
    ranks = bf_ranks(data["query_emb"], data["cand_emb"], perm, metric)
    np.testing.assert_array_equal(table["rank"], ranks)
    assert m["n_candidates"] == n and m["match"] == "pair"
    act = data["query_active"]
    assert_group(m["all"], bf_group(ranks, n))
    assert_group(m["active"], bf_group(ranks[act], n))
    conc = data["query_conc"]
    assert list(m["per_concentration"]) == ["0.25", "1.0", "10.0"]
    for c in CONCS:
        sel = conc == c
        pc = m["per_concentration"][concentration_key(c)]
        assert_group(pc["all"], bf_group(ranks[sel], n))
        assert_group(pc["active"], bf_group(ranks[sel & act], n))


def test_exact_ties_count_against_query():
    # integer rows and dot products: every score is exact; candidates 0..2 are identical
    cand = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    q = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    mols = ["a", "b", "c", "d", "e"]
    m, t = evaluate_embeddings(q, ["a", "d", "e"], [1.0] * 3, [True] * 3, cand, mols, [1.0] * 5,
                               metric="dot", n_bootstrap=0, return_ranks=True)
    # query a: b, c tie with a and e scores equal -> rank 3; query d: e ties -> 1; query e: 0
    np.testing.assert_array_equal(t["rank"], [3, 1, 0])
    np.testing.assert_array_equal(t["rank"], bf_ranks(q, cand, [0, 3, 4], "dot"))
    assert m["all"]["top1"] == pytest.approx(1 / 3)
    assert m["all"]["ci95"] == {"top1": None, "top5": None}


def test_match_molecule_matches_bruteforce():
    rng = np.random.default_rng(1)
    n_mol = 30
    mols = [f"mol{i}" for i in range(n_mol)]
    cand = rng.normal(size=(n_mol, 6))
    qm = [m for m in mols for _ in CONCS]
    qc = [c for _ in mols for c in CONCS]
    tgt = np.repeat(np.arange(n_mol), len(CONCS))
    q = cand[tgt] + rng.normal(size=(len(qm), 6))
    act = rng.random(len(qm)) < 0.5
    m, t = evaluate_embeddings(q, qm, qc, act, cand, mols, None, match="molecule",
                               n_bootstrap=20, return_ranks=True)
    np.testing.assert_array_equal(t["target"], tgt)
    ranks = bf_ranks(q, cand, tgt, "cosine")
    np.testing.assert_array_equal(t["rank"], ranks)
    assert m["match"] == "molecule" and m["n_candidates"] == n_mol
    assert_group(m["all"], bf_group(ranks, n_mol))
    assert_group(m["active"], bf_group(ranks[act], n_mol))
    assert set(m["per_concentration"]) == {"0.25", "1.0", "10.0"}
    with pytest.raises(ValueError, match="share the molecule"):
        evaluate_embeddings(q, qm, qc, act, cand[:2], ["mol0", "mol0"], match="molecule")


def test_agrees_with_ops_and_torch_inputs():
    data, perm = pair_data(dup=False)
    m = evaluate_embeddings(**data, n_bootstrap=0)
    ranks = ops.retrieval_ranks(data["query_emb"], data["cand_emb"], perm)
    n = len(perm)
    rec = ops.recall_at_fraction(ranks, n, (0.01, 0.05))
    assert m["all"]["top1"] == rec[0.01] and m["all"]["top5"] == rec[0.05]
    tdata = dict(data, query_emb=torch.from_numpy(data["query_emb"]),
                 cand_emb=torch.from_numpy(data["cand_emb"]),
                 query_active=torch.from_numpy(data["query_active"]))
    assert evaluate_embeddings(**tdata, n_bootstrap=0) == m


def test_chance_levels_and_fraction_keys_exact():
    assert fraction_key(0.01) == "top1" and fraction_key(0.05) == "top5"
    assert fraction_key(0.07) == "top7" and fraction_key(0.005) == "top0.5"
    ranks = np.arange(100) % 100
    m = metrics_from_ranks(ranks, 100, np.ones(100), np.zeros(100, bool),
                           fractions=(0.01, 0.07), n_bootstrap=0)
    assert m["all"]["chance"] == {"top1": 1 / 100, "top7": 7 / 100}  # 0.07 * 100 is 7, not 8
    assert m["all"]["top7"] == 0.07
    m = metrics_from_ranks(np.zeros(3, np.int64), 150, np.ones(3), np.ones(3, bool), n_bootstrap=0)
    assert m["all"]["chance"] == {"top1": 2 / 150, "top5": 8 / 150}
    m = metrics_from_ranks(np.zeros(1, np.int64), 7, [1.0], [True], n_bootstrap=0)
    assert m["all"]["chance"] == {"top1": 1 / 7, "top5": 1 / 7}  # k = max(1, ...)


@pytest.mark.parametrize("n,same", [(22, ["top1"]), (99, ["top1"]), (100, ["top1"]), (101, []),
                                     (7, ["top1", "top5"]), (20, ["top1", "top5"]), (21, ["top1"])])
def test_small_candidate_sets_say_when_top_percent_is_top_1(n, same):
    """k = max(1, ceil(f N)): top-1% is the true candidate first up to N = 100; the split says so."""
    rng = np.random.default_rng(n)
    ranks = rng.integers(0, n, size=60)
    act = rng.random(60) < 0.4
    m = metrics_from_ranks(ranks, n, np.ones(60), act, n_bootstrap=200, seed=2)
    assert m["same_as_rank1"] == same
    assert m["k"] == {"top1": max(1, math.ceil(n / 100)), "top5": max(1, math.ceil(5 * n / 100))}
    for grp, sel in (("all", np.ones(60, bool)), ("active", act)):
        g, r = m[grp], ranks[sel]
        # the existing keys stay, with their meaning: top1 is the top-1% recall (a fraction)
        assert {"top1", "top5", "n_queries", "ci95", "chance", "mean_rank", "mrr"} <= set(g)
        assert g["top1"] == pytest.approx(np.mean(r < m["k"]["top1"]))
        # the counts and top-1 beside them
        assert g["hits"] == {"rank1": int((r == 0).sum()), "top1": int((r < m["k"]["top1"]).sum()),
                             "top5": int((r < m["k"]["top5"]).sum())}
        assert g["rank1"] == pytest.approx(np.mean(r == 0))
        if "top1" in same:
            assert g["rank1"] == g["top1"] and g["ci95_rank1"] == g["ci95"]["top1"]
        lo, hi = g["ci95_rank1"]
        assert lo <= g["rank1"] <= hi
        # each with its chance level
        assert g["chance_rank1"] == pytest.approx(1 / n)
        assert g["chance_mrr"] == pytest.approx(sum(1 / i for i in range(1, n + 1)) / n)
        assert g["chance_mean_rank"] == pytest.approx((n + 1) / 2)
        assert g["hits_chance"] == pytest.approx({"rank1": len(r) / n, "top1": len(r) * m["k"]["top1"] / n,
                                                  "top5": len(r) * m["k"]["top5"] / n})


def test_new_keys_leave_the_existing_intervals_alone():
    """ci95 of top-K% comes from the same draws as before the top-1 interval was added."""
    from molphenix.eval.metrics import _bootstrap_ci

    rng = np.random.default_rng(5)
    ranks = rng.integers(0, 300, size=200)
    m = metrics_from_ranks(ranks, 300, np.ones(200), np.ones(200, bool), n_bootstrap=300, seed=4)
    want = _bootstrap_ci(ranks, [3, 15], 300, 4, "all")
    assert m["all"]["ci95"] == {"top1": list(want[0]), "top5": list(want[1])}


def test_bootstrap_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(3)
    n = 1000
    ranks = rng.integers(0, n, size=400)
    conc = rng.choice(CONCS, size=400)
    act = rng.random(400) < 0.4
    a = metrics_from_ranks(ranks, n, conc, act, n_bootstrap=500, seed=7)
    b = metrics_from_ranks(ranks, n, conc, act, n_bootstrap=500, seed=7)
    c = metrics_from_ranks(ranks, n, conc, act, n_bootstrap=500, seed=8)
    assert a == b
    assert a["all"]["ci95"] != c["all"]["ci95"]

    def walk(g):
        for key in ("top1", "top5"):
            lo, hi = g["ci95"][key]
            assert 0.0 <= lo <= g[key] <= hi <= 1.0
        assert g["ci95"]["top5"][1] > g["ci95"]["top5"][0]  # a real spread at these rates

    walk(a["all"])
    walk(a["active"])
    for pc in a["per_concentration"].values():
        walk(pc["all"])
    # the multinomial draw equals resampling query indices in distribution: compare percentiles
    # with a direct resampling (both with many draws; the grid step is 1/400)
    big = metrics_from_ranks(ranks, n, conc, act, n_bootstrap=4000, seed=1)["all"]["ci95"]
    idx = np.random.default_rng(11).integers(0, len(ranks), size=(4000, len(ranks)))
    for key, k in (("top1", 10), ("top5", 50)):
        direct = np.percentile((ranks < k)[idx].mean(axis=1), [2.5, 97.5])
        np.testing.assert_allclose(big[key], direct, atol=0.006)


def test_concentration_keys():
    conc = np.array([10.0, 0.25, np.float32(0.1), 1.0, 0.1], dtype=np.float64)
    m = metrics_from_ranks(np.zeros(5, np.int64), 10, conc, np.ones(5, bool), n_bootstrap=0)
    assert list(m["per_concentration"]) == ["0.1", "0.25", "1.0", "10.0"]
    assert m["per_concentration"]["0.1"]["all"]["n_queries"] == 2  # float32 0.1 is the same dose
    # and pair matching compares concentrations the same way
    t = query_targets(["a"], np.array([0.1], np.float32), ["a", "a"], [0.25, 0.1])
    np.testing.assert_array_equal(t, [1])


def test_empty_active_set_is_null_and_json_round_trip(tmp_path):
    data, _ = pair_data(n_mol=10)
    data["query_active"] = np.zeros(len(data["query_molecule"]), bool)
    m = evaluate_embeddings(**data, n_bootstrap=30)
    a = m["active"]
    assert a["n_queries"] == 0 and a["top1"] is None and a["top5"] is None
    assert a["mean_rank"] is None and a["mrr"] is None
    assert a["ci95"] == {"top1": None, "top5": None}
    assert a["chance"] == m["all"]["chance"]
    path = write_metrics(tmp_path / "run" / "metrics.json", {"unseen_molecules": m})
    text = path.read_text()
    assert "NaN" not in text
    back = read_metrics(path)
    assert back["schema_version"] == SCHEMA_VERSION
    assert back["unseen_molecules"] == json.loads(json.dumps(m))
    assert "schema_version" not in back["unseen_molecules"]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp left behind


def test_read_metrics_rejects_newer_schema(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ValueError, match="schema_version"):
        read_metrics(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid"):
        read_metrics(p)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_query_ranks_file_round_trip(tmp_path, suffix):
    data, _ = pair_data(n_mol=5)
    _, table = evaluate_embeddings(**data, n_bootstrap=0, return_ranks=True)
    assert len(table) == 15
    path = write_query_ranks(tmp_path / f"ranks{suffix}", table, split="unseen_wells")
    back = read_query_ranks(path)
    assert list(back) == ["split", "molecule", "concentration", "active", "target", "rank"]
    np.testing.assert_array_equal(back["rank"], table["rank"])
    np.testing.assert_array_equal(back["molecule"], table["molecule"])
    np.testing.assert_array_equal(back["active"], table["active"])
    np.testing.assert_allclose(back["concentration"], table["concentration"])


def test_errors_name_the_argument():
    data, _ = pair_data(n_mol=4)
    with pytest.raises(ValueError, match="match"):
        evaluate_embeddings(**data, match="both")
    bad = dict(data, query_molecule=["zzz"] + data["query_molecule"][1:])
    with pytest.raises(ValueError, match="query 0 .*'zzz'"):
        evaluate_embeddings(**bad)
    dup = dict(data, cand_molecule=["m0"] * len(data["cand_molecule"]))
    with pytest.raises(ValueError, match="share"):
        evaluate_embeddings(**dup)
    with pytest.raises(ValueError, match="query_conc"):
        evaluate_embeddings(**dict(data, query_conc=data["query_conc"][:-1]))
    with pytest.raises(ValueError, match="cand_emb"):
        evaluate_embeddings(**dict(data, cand_emb=data["cand_emb"][:, :3]))
    with pytest.raises(ValueError, match="cand_conc"):
        evaluate_embeddings(**dict(data, cand_conc=None))
    with pytest.raises(ValueError, match="NaN"):
        q = data["query_emb"].copy()
        q[2, 1] = np.nan
        evaluate_embeddings(**dict(data, query_emb=q))
    with pytest.raises(TypeError, match="query_active"):
        evaluate_embeddings(**dict(data, query_active=np.full(12, 0.5)))
    with pytest.raises(ValueError, match="fractions"):
        evaluate_embeddings(**data, fractions=(0.0,))
    with pytest.raises(ValueError, match="n_bootstrap"):
        evaluate_embeddings(**data, n_bootstrap=-1)
    with pytest.raises(ValueError, match="ranks"):
        metrics_from_ranks(np.array([5]), 5, [1.0], [True])


def test_average_queries():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    mol = ["b", "a", "a", "b", "a", "a", "b", "c", "c", "a", "b", "c"]
    conc = np.array([1, 1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 1], dtype=np.float32)
    act = np.array([0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1], bool)
    out = average_queries(x, mol, conc, act)
    assert out["molecule"].tolist() == ["a", "a", "b", "b", "c"]
    assert out["concentration"].tolist() == [1.0, 2.0, 1.0, 2.0, 1.0]
    assert out["n_wells"].tolist() == [2, 3, 3, 1, 3]
    assert out["active"].tolist() == [True, False, False, True, True]
    for g, (m, c) in enumerate(zip(out["molecule"], out["concentration"])):
        sel = np.array([mm == m for mm in mol]) & (conc == c)
        np.testing.assert_allclose(out["x"][g], x[sel].astype(np.float64).mean(0), rtol=1e-6)
    assert out["x"].dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(n_mol=st.integers(1, 25), d=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       f=st.sampled_from([0.01, 0.05, 0.07, 0.2, 0.5, 1.0]))
def test_property_small_integer_data(n_mol, d, seed, f):
    # small integers and dot products: every score is exact, ties are frequent
    rng = np.random.default_rng(seed)
    mols = [f"m{i}" for i in range(n_mol)]
    cm = [m for m in mols for _ in (1.0, 3.0)]
    cc = [c for _ in mols for c in (1.0, 3.0)]
    cand = rng.integers(-2, 3, size=(len(cm), d)).astype(np.float32)
    q = rng.integers(-2, 3, size=(len(cm), d)).astype(np.float32)
    act = rng.random(len(cm)) < 0.5
    m, t = evaluate_embeddings(q, cm, cc, act, cand, cm, cc, metric="dot", fractions=(f,),
                               n_bootstrap=200, return_ranks=True)
    ranks = bf_ranks(q, cand, np.arange(len(cm)), "dot")
    np.testing.assert_array_equal(t["rank"], ranks)
    n = len(cm)
    k = max(1, math.ceil(Fraction(repr(f)) * n))
    key = fraction_key(f)
    for grp, sel in (("all", np.ones(n, bool)), ("active", act)):
        g = m[grp]
        assert g["n_queries"] == int(sel.sum())
        assert g["chance"] == {key: k / n}
        if sel.any():
            assert g[key] == float(np.mean(ranks[sel] < k))
            lo, hi = g["ci95"][key]
            assert 0 <= lo <= g[key] <= hi <= 1
        else:
            assert g[key] is None
    json.dumps(m, allow_nan=False)
