"""Screen statistics (molphenix.data.stats): each statistic recovers what a constructed screen
plants, errors name the argument, and the soft-label space is the trainer's."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from molphenix.data import from_tables
from molphenix.data.stats import (
    PAIR_KINDS,
    activity_fractions,
    arctan_similarity_from_quantile,
    control_calibration,
    control_distance,
    position_effects,
    replicate_consistency,
    screen_statistics,
    soft_label_pairs,
    variance_share,
    well_addresses,
)

ROWS = "ABCDEFGHIJKLMNOP"


def make_screen(*, n_samples=60, reps=3, n_batches=4, plates_per_batch=3, ctrl_per_plate=12, dim=40,
                effect=None, plate_sd=0.0, address_sd=0.0, same_address=True, seed=0):
    """A small screen: ``effect[s]`` is sample s's shift (rows of [n_samples, dim]); replicate
    wells of a sample sit in distinct batches (at one address when ``same_address``); every
    plate holds ``ctrl_per_plate`` controls at fixed addresses. Noise is N(0, 1) per feature."""
    rng = np.random.default_rng(seed)
    n_addr = 384
    addr_shift = rng.standard_normal((n_addr, dim)) * address_sd
    ctrl_addr = np.arange(ctrl_per_plate) * 7 + 3
    free = np.setdiff1d(np.arange(n_addr), ctrl_addr)
    # two samples per home address (different molecules at one address of different plates)
    home = np.tile(rng.choice(free, size=(n_samples + 1) // 2, replace=False), 2)[:n_samples]
    rows = []
    plate_shift = {}
    for b in range(n_batches):
        for p in range(plates_per_batch):
            plate_shift[(b, p)] = rng.standard_normal(dim) * plate_sd
            for a in ctrl_addr:
                rows.append((b, p, int(a), None))
    for s in range(n_samples):
        bs = rng.choice(n_batches, size=reps, replace=False)
        for b in bs:
            p = int(rng.integers(plates_per_batch))
            a = int(home[s]) if same_address else int(rng.choice(free))
            rows.append((int(b), p, a, s))
    n = len(rows)
    x = rng.standard_normal((n, dim))
    for i, (b, p, a, s) in enumerate(rows):
        x[i] += plate_shift[(b, p)] + addr_shift[a]
        if s is not None and effect is not None:
            x[i] += effect[s]
    conc = [None if s is None else 1.0 for (_, _, _, s) in rows]
    mol = [None if s is None else f"m{s}" for (_, _, _, s) in rows]
    wells = pa.table({
        "well_id": [f"b{b}-p{p}-{ROWS[a // 24]}{a % 24 + 1:02d}-{i}" for i, (b, p, a, _s) in enumerate(rows)],
        "dataset": ["screen"] * n,
        "batch": [f"b{b}" for (b, _, _, _) in rows],
        "plate": [f"b{b}-p{p}" for (b, p, _, _) in rows],
        "molecule_id": mol,
        "concentration_um": pa.array(conc, pa.float64()),
        "is_control": [s is None for (_, _, _, s) in rows],
        "address": [f"{ROWS[a // 24]}{a % 24 + 1}" for (_, _, a, _) in rows],
        "phenomic": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), dim),
    })
    molecules = pa.table({"molecule_id": [f"m{s}" for s in range(n_samples)],
                          "smiles": ["C" * (1 + s % 8) + "O" for s in range(n_samples)]})
    return from_tables(wells, molecules)


def calls_for(ds, active_ids):
    keys = ds.sample_keys()
    m = keys.column("molecule_id").to_pylist()
    p = [0.001 if k in active_ids else 0.6 for k in m]
    return pa.table({"molecule_id": m, "concentration_um": keys.column("concentration_um"),
                     "p_value": pa.array(p, pa.float64()), "active": pa.array([v < 0.1 for v in p])})


def test_soft_label_similarity_is_the_trainers(rng=np.random.default_rng(3)):
    torch = pytest.importorskip("torch")
    from molphenix.data.stats import _pair_quantile
    from molphenix.losses import fit_similarity_scale, soft_label_window
    from molphenix.ops import arctan_l2_similarity

    x = rng.standard_normal((300, 17)) * np.linspace(0.2, 2.0, 17)
    for f in (0.005, 0.05):
        q = _pair_quantile(x, f, seed=5, n_pairs=20_000)
        sigma = fit_similarity_scale(x, f, seed=5, n_pairs=20_000)
        assert math.isclose(sigma**2 * soft_label_window(), q, rel_tol=1e-12)
        u = torch.from_numpy(x / sigma)
        s_ref = arctan_l2_similarity(u, u, c=0.3, backend="reference").numpy()
        d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        np.testing.assert_allclose(arctan_similarity_from_quantile(d2, q), s_ref, rtol=1e-9, atol=1e-9)
        # s~ >= 0.75 exactly inside the window
        s = arctan_similarity_from_quantile(d2, q)
        off = ~np.eye(len(x), dtype=bool)
        assert ((s >= 0.75) == (d2 <= q * (1 + 1e-12)))[off].all()


def test_arctan_similarity_bad_arguments():
    with pytest.raises(ValueError, match="quantile"):
        arctan_similarity_from_quantile(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="threshold"):
        arctan_similarity_from_quantile(np.ones(3), 1.0, threshold=1.0)


def test_replicate_consistency_recovers_planted_replication():
    rng = np.random.default_rng(1)
    n = 60
    strong = rng.standard_normal((n, 40)) * 1.5
    ds = make_screen(n_samples=n, effect=strong, seed=1)
    half = {f"m{s}" for s in range(n // 2)}
    rc = replicate_consistency(ds, calls_for(ds, half), n_null=300)
    assert rc["percent_replicating"] > 0.9
    assert rc["mean_replicate_corr"] > 0.5 > abs(rc["null_mean_corr"]) + 0.4
    assert rc["active"]["n_samples"] == n // 2 and rc["inactive"]["n_samples"] == n // 2
    # pure noise: about the null's 5% tail
    ds0 = make_screen(n_samples=n, effect=None, seed=2)
    rc0 = replicate_consistency(ds0, n_null=300)
    assert rc0["percent_replicating"] < 0.2
    assert abs(rc0["mean_replicate_corr"]) < 0.05
    assert "active" not in rc0  # no calls: no split


def test_replicate_consistency_subsamples_large_groups():
    ds = make_screen(n_samples=20, reps=4, seed=4, effect=np.random.default_rng(4).standard_normal((20, 40)))
    assert replicate_consistency(ds, n_null=50, max_group=2)["group_sizes"] == {"2": 20}
    assert replicate_consistency(ds, n_null=50, max_group=None)["group_sizes"] == {"4": 20}
    with pytest.raises(ValueError, match="max_group"):
        replicate_consistency(ds, max_group=1)
    with pytest.raises(ValueError, match="n_null"):
        replicate_consistency(ds, n_null=2)


def test_control_distance_in_noise_units():
    n, dim = 40, 40
    shift = np.zeros((n, dim))
    shift[: n // 2, 0] = 3.0 * math.sqrt(dim)  # 3x the noise norm (sqrt(dim)) for half the samples
    ds = make_screen(n_samples=n, effect=shift, dim=dim, seed=5)
    act = {f"m{s}" for s in range(n // 2)}
    cd = control_distance(ds, calls_for(ds, act))
    assert 0.85 < cd["control"]["q50"] < 1.1
    assert cd["active"]["q50"] == pytest.approx(math.sqrt(10), rel=0.15)
    assert 0.85 < cd["inactive"]["q50"] < 1.15
    assert cd["beyond_control"]["active"] > 0.95
    assert cd["beyond_control"]["control"] == pytest.approx(0.05, abs=0.03)


def test_variance_share_recovers_plate_effects():
    # plate shift variance 1 per feature vs noise 1: omega-squared about 0.5
    ds = make_screen(plate_sd=1.0, ctrl_per_plate=20, plates_per_batch=4, seed=6)
    v = variance_share(ds)
    assert v["plate_controls"] == pytest.approx(0.5, abs=0.15)
    ds0 = make_screen(plate_sd=0.0, ctrl_per_plate=20, seed=7)
    v0 = variance_share(ds0)
    assert abs(v0["plate_controls"]) < 0.05 and abs(v0["batch_controls"]) < 0.05
    assert abs(v0["plate_within_batch_controls"]) < 0.05


def test_well_addresses_parsing(tiny):
    ds = make_screen(n_samples=5, seed=8)
    a = well_addresses(ds)
    assert a is not None and set(a) <= {f"{r}{c}" for r in ROWS for c in range(1, 25)}
    # the simulator's well ids end in the address
    sa = well_addresses(tiny)
    ids = tiny.wells.column("well_id").to_pylist()
    assert sa is not None and all(i.endswith(f"{x[0]}{int(x[1:]):02d}") for i, x in zip(ids[:50], sa[:50]))
    # ids without an address and no address column: unknown
    w = tiny.wells.set_column(tiny.wells.schema.get_field_index("well_id"), "well_id",
                              pa.array([f"w{i}" for i in range(tiny.n_wells)]))
    assert well_addresses(type(tiny)(wells=w, molecules=tiny.molecules)) is None
    assert position_effects(type(tiny)(wells=w, molecules=tiny.molecules)) == {"available": False}


def test_position_effects_and_control_calibration_detect_address_effects():
    ds0 = make_screen(n_samples=60, address_sd=0.0, ctrl_per_plate=24, seed=9)
    ds1 = make_screen(n_samples=60, address_sd=1.0, ctrl_per_plate=24, seed=9)
    inactive = set()
    p0, p1 = position_effects(ds0, calls_for(ds0, inactive)), position_effects(ds1, calls_for(ds1, inactive))
    assert abs(p0["address_controls"]) < 0.05 and p1["address_controls"] == pytest.approx(0.5, abs=0.15)
    assert abs(p0["control_corr_same_address"]) < 0.05 < p1["control_corr_same_address"] - 0.3
    assert p1["replicate_pairs_same_address"] == 1.0
    # the planted address effect is the same in every batch
    assert p1["control_corr_same_address_same_batch"] == pytest.approx(p1["control_corr_same_address_other_batch"], abs=0.1)
    # inactive samples replicate through their position only: replicate pairs are as alike as
    # other molecules' wells at the same address
    assert p1["inactive_replicate_corr"] == pytest.approx(p1["inactive_same_address_corr"], abs=0.1)
    assert p1["inactive_replicate_corr"] > 0.3
    c0, c1 = control_calibration(ds0, n_wells=2), control_calibration(ds1, n_wells=2)
    assert c0["same_address"]["n"] > 20
    assert c0["same_address"]["0.1"] < 0.3 and c0["random_address"]["0.1"] < 0.3
    assert c1["same_address"]["0.1"] > 0.6 > c1["random_address"]["0.1"]


def test_soft_label_pairs_by_kind():
    n, dim = 80, 40
    rng = np.random.default_rng(10)
    eff = np.zeros((n, dim))
    eff[: n // 4] = rng.standard_normal((n // 4, dim)) * 1.5  # a quarter active, strong effects
    ds = make_screen(n_samples=n, effect=eff, dim=dim, seed=10)
    calls = calls_for(ds, {f"m{s}" for s in range(n // 4)})
    sl = soft_label_pairs(ds, calls, soft_positive_fraction=0.05, inactive_rate=1.0)
    assert sl["n_samples"] == n and sl["n_active"] == n // 4
    assert sl["n_pairs"] == n * (n - 1) // 2  # all pairs when few
    wf = sl["window_fraction"]
    assert wf["inactive-inactive"] > wf["active-inactive"] >= wf["active-active"]
    # with no undersampling the fitting population is this one: about f of all pairs inside
    assert wf["all"] == pytest.approx(0.05, abs=0.03)
    assert sum(sl["pair_share"].values()) == pytest.approx(1.0)
    for k in PAIR_KINDS:
        c = np.asarray(sl["cdf"][k])
        assert (np.diff(c) >= 0).all() and c[-1] == 1.0
    assert sl["median_similarity"]["inactive-inactive"] > sl["median_similarity"]["active-active"]
    with pytest.raises(ValueError, match="soft_positive_fraction"):
        soft_label_pairs(ds, calls, soft_positive_fraction=0.0)


def test_screen_statistics_on_a_simulation_and_errors(sim):
    st = screen_statistics(sim, dataset_name="lib_a")
    assert set(st) >= {"counts", "activity", "replicates", "distance", "soft_labels", "variance", "position"}
    assert st["counts"]["samples"] == st["activity"]["n_samples"]
    act = activity_fractions(sim, dataset_name="lib_a")
    assert 0 < act["samples"]["0.01"] <= act["samples"]["0.05"] <= act["samples"]["0.1"] < 1
    assert st["position"]["available"]
    with pytest.raises(ValueError, match="dataset_name"):
        screen_statistics(sim, dataset_name="nope")
    no_calls = type(sim)(wells=sim.wells, molecules=sim.molecules)
    with pytest.raises(ValueError, match="calls"):
        screen_statistics(no_calls)
    with pytest.raises(ValueError, match="cutoffs"):
        activity_fractions(sim, cutoffs=(0.0,))
    with pytest.raises(TypeError, match="dataset"):
        control_distance(sim.wells)


def test_soft_label_scale_is_the_trainers(sim):
    """soft_label_pairs fits its scale on the trainer's population with the trainer's draws."""
    pytest.importorskip("torch")
    from molphenix.data import ReplicateSampler
    from molphenix.losses import S2LLoss, soft_label_window
    from molphenix.train.scales import fit_scales

    lib_a = np.asarray(sim.wells.column("dataset").to_pylist()) == "lib_a"
    sl = soft_label_pairs(sim, dataset_name="lib_a", soft_positive_fraction=0.005, inactive_rate=0.1, seed=3)
    sampler = ReplicateSampler(sim, sim.calls, wells=lib_a, inactive_rate=0.1, normalize="center", seed=3)
    _, sigma = fit_scales(sampler, S2LLoss(), seed=3, soft_positive_fraction=0.005)
    assert sigma**2 * soft_label_window() == pytest.approx(sl["sigma2_quantile"], rel=1e-9)
