"""The simulator: determinism, realism statistics, layout."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.compute as pc
import pytest

from molphenix.data import SimulatorConfig, load_dataset, simulate

FILES = ("wells.parquet", "molecules.parquet", "truth.parquet", "calls.parquet")


def _digest(path) -> dict[str, str]:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in FILES if (path / f).exists()}


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    a = simulate(tmp_path / "a", n_molecules=60, seed=11, embedding_dim=32, return_dataset=False)
    b = simulate(tmp_path / "b", n_molecules=60, seed=11, embedding_dim=32, return_dataset=False)
    c = simulate(tmp_path / "c", n_molecules=60, seed=12, embedding_dim=32, return_dataset=False)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert set(da) == set(FILES)
    assert da == db
    assert da["wells.parquet"] != dc["wells.parquet"]
    ma = json.loads((a / "meta.json").read_text())
    assert ma["seed"] == 11 and ma["config"] == SimulatorConfig(n_molecules=60, embedding_dim=32).to_dict()


def test_meta_records_every_parameter(sim):
    cfg = sim.meta["config"]
    assert set(cfg) == set(SimulatorConfig().to_dict())
    assert sim.meta["simulator_version"]
    m = sim.meta["measured"]
    # effects comparable to (not far above) well noise; batch effects comparable to effects
    assert 0.5 < m["effect_to_noise_ratio"] < 4
    assert 0.3 < m["batch_to_effect_ratio"] < 3


def test_active_fraction_at_top_dose(sim):
    t = sim.truth
    top = max(SimulatorConfig().concentrations_um)
    act = t.filter(pc.equal(t.column("concentration_um"), top)).column("active").to_numpy(zero_copy_only=False)
    assert 0.10 <= act.mean() <= 0.35
    # the dose-response is monotone: fewer actives at the lowest dose
    low = t.filter(pc.equal(t.column("concentration_um"), min(SimulatorConfig().concentrations_um)))
    assert low.column("active").to_numpy(zero_copy_only=False).mean() < act.mean()


def test_controls_in_every_batch_and_fraction(sim):
    batch = np.asarray(sim.wells.column("batch").to_pylist())
    ctrl = sim.control_mask()
    for b in np.unique(batch):
        m = batch == b
        assert ctrl[m].sum() >= SimulatorConfig().min_controls_per_batch
    assert 0.05 < ctrl.mean() < 0.2
    # controls have no molecule and no concentration
    assert sim.wells.filter(sim.wells.column("is_control")).column("molecule_id").null_count == int(ctrl.sum())


def test_replicates_spread_over_distinct_batches(sim):
    w = sim.wells.filter(pc.invert(sim.wells.column("is_control")))
    g = w.group_by(["molecule_id", "concentration_um"]).aggregate([("batch", "count"), ("batch", "count_distinct")])
    n = g.column("batch_count").to_numpy()
    nd = g.column("batch_count_distinct").to_numpy()
    cfg = SimulatorConfig()
    assert n.min() >= cfg.min_replicates and n.max() <= cfg.max_replicates
    assert (n == nd).all()  # every replicate in its own batch
    assert len(np.unique(n)) > 1


def test_second_library_has_its_own_batches_and_molecules(sim):
    w = sim.wells
    ds = np.asarray(w.column("dataset").to_pylist())
    batch = np.asarray(w.column("batch").to_pylist())
    mol = np.asarray(w.column("molecule_id").to_pylist(), dtype=object)
    assert set(ds) == {"lib_a", "lib_b"}
    assert not set(batch[ds == "lib_a"]) & set(batch[ds == "lib_b"])
    ma = {m for m in mol[ds == "lib_a"] if m is not None}
    mb = {m for m in mol[ds == "lib_b"] if m is not None}
    assert ma and mb and not ma & mb
    assert abs(len(mb) / (len(ma) + len(mb)) - SimulatorConfig().second_library_fraction) < 0.02


def test_real_molecules_with_diverse_scaffolds(sim):
    from molphenix.data import scaffold_of

    smiles = sim.molecules.column("smiles").to_pylist()
    assert len(set(smiles)) == len(smiles)
    scaf = {scaffold_of(s) for s in smiles}
    assert len(scaf) > 0.4 * len(smiles)


def test_similar_molecules_act_alike(sim):
    """The hidden map is smooth in structure: a molecule's activity score correlates with its
    nearest structural neighbour's (random pairs: no correlation), yet neighbours sometimes
    differ in activity (cliffs)."""
    from molphenix.data.featurize import MorganCounts

    t = sim.truth
    top = t.filter(pc.equal(t.column("concentration_um"), 10.0))
    score = dict(zip(top.column("molecule_id").to_pylist(), top.column("activity_score").to_pylist()))
    act = dict(zip(top.column("molecule_id").to_pylist(), top.column("active").to_pylist()))
    ids = sim.molecules.column("molecule_id").to_pylist()
    fp = MorganCounts(n_bits=2048)(sim.molecules.column("smiles").to_pylist()) > 0
    inter = fp.astype(np.float32) @ fp.T.astype(np.float32)
    cnt = fp.sum(1)
    tan = inter / (cnt[:, None] + cnt[None, :] - inter)
    np.fill_diagonal(tan, -1)
    nn = tan.argmax(1)
    s = np.array([score[i] for i in ids])
    a = np.array([act[i] for i in ids])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(s))
    assert np.corrcoef(s, s[nn])[0, 1] > 0.25
    assert abs(np.corrcoef(s, s[perm])[0, 1]) < 0.15
    assert (a == a[nn]).mean() > (a == a[perm]).mean()
    assert (a != a[nn]).any()  # cliffs: some nearest neighbours differ in activity


def test_single_library_and_validation(tmp_path):
    ds = simulate(tmp_path / "one", n_molecules=30, seed=1, second_library_fraction=0.0, embedding_dim=8, call_activity=False)
    assert ds.datasets == ["lib_a"]
    with pytest.raises(ValueError):
        SimulatorConfig(n_molecules=1)
    with pytest.raises(ValueError, match="molecules.*requested"):
        simulate(tmp_path / "big", n_molecules=20000, seed=0)
    with pytest.raises(FileExistsError):
        simulate(tmp_path / "one", n_molecules=30, seed=1)


def test_python_m_entry_point(tmp_path):
    import subprocess
    import sys
    import os

    env = dict(os.environ)
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "molphenix", "simulate", "--out", str(out),
         "--molecules", "20", "--seed", "5", "--embedding-dim", "8", "--no-calls"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "wells" in r.stdout
    assert load_dataset(out).embedding_dim == 8


def test_data_layer_has_no_cli_entry_point():
    # the data layer sits below the CLI: no molphenix.data.simulate module that imports it, and
    # molphenix.data.simulate is the simulator function (no submodule shadowing it)
    import importlib.util

    import molphenix.data as data

    assert importlib.util.find_spec("molphenix.data.simulate") is None
    assert callable(data.simulate) and data.simulate.__module__ == "molphenix.data.simulator"


def test_typer_command(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from molphenix.cli.data import simulate_command

    app = typer.Typer()
    app.command()(simulate_command)
    r = CliRunner().invoke(app, ["--out", str(tmp_path / "t"), "--molecules", "20", "--seed", "2", "--embedding-dim", "8", "--no-calls"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "wells.parquet").exists()


def test_call_activity_command(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from molphenix.cli.data import call_activity_command

    out = tmp_path / "d"
    simulate(out, n_molecules=40, seed=4, embedding_dim=16, call_activity=False, return_dataset=False)
    assert not (out / "calls.parquet").exists()
    app = typer.Typer()
    app.command()(call_activity_command)
    r = CliRunner().invoke(app, [str(out), "--n-null", "200"])
    assert r.exit_code == 0, r.output
    assert "ROC AUC vs truth" in r.output
    assert load_dataset(out).calls is not None


def test_phenotype_direction_turns_with_dose():
    from molphenix.data.simulator import _HiddenMap, _effect_vectors

    cfg = SimulatorConfig()
    hidden = _HiddenMap(cfg, 0)
    rng = np.random.default_rng(0)
    m = 50
    mech = rng.integers(0, cfg.n_mechanisms, m)
    mol_dir = rng.standard_normal((m, cfg.latent_dim))
    mol_dir /= np.linalg.norm(mol_dir, axis=1, keepdims=True)
    resp = np.tile([0.05, 0.3, 0.6, 0.95], (m, 1))
    amp = np.full((m, 1), 2.0)
    eff = _effect_vectors(cfg, hidden, mech, mol_dir, resp, amp * resp)
    np.testing.assert_allclose(np.linalg.norm(eff, axis=2), amp * resp, rtol=1e-10)
    unit = eff / np.linalg.norm(eff, axis=2, keepdims=True)
    cos_low_high = (unit[:, 0] * unit[:, 3]).sum(1)
    cos_adjacent = (unit[:, 2] * unit[:, 3]).sum(1)
    assert (cos_low_high < 0.999).all()  # the direction changes with dose ...
    assert np.median(cos_low_high) < np.median(cos_adjacent)  # ... progressively
    # and the same mechanism at the same dose points the same way up to the molecule term
    assert np.median(cos_low_high) > 0


# ---------------------------------------------------------------- simulator 1.1: plate map, position, weak phenotypes

#: The options that turn simulator 1.1's additions off (simulator 1.0's behaviour).
V1 = dict(plate_map="random", position_scale=0.0, inactive_effect_scale=0.0)


def test_new_effects_off_reproduce_simulator_1_0():
    """Golden values from simulator 1.0 (commit 86df29e, same call); at the time the four
    Parquet files of a 300-molecule simulation were also byte-identical between 1.0 and 1.1
    with these options. Tolerances cover BLAS rounding of the float32 encoder only."""
    ds = simulate(None, n_molecules=60, seed=11, embedding_dim=32, call_activity=False, progress=False, **V1)
    x = ds.phenomic_matrix().astype(np.float64)
    assert x.shape == (884, 32)
    np.testing.assert_allclose([x.sum(), (x**2).sum()], [-1201.7422002482344, 11216.090360616015], rtol=1e-6)
    np.testing.assert_allclose(x[0, :3], [-0.30692213773727417, -0.4343634843826294, -1.0739433765411377], rtol=1e-5)
    ids = ds.wells.column("well_id").to_pylist()
    mol = ds.wells.column("molecule_id").to_pylist()
    layout = hashlib.sha256("|".join(f"{a},{b}" for a, b in zip(ids, mol)).encode()).hexdigest()
    assert layout == "24fccd962f135059cabbca39fd038f958211c43aff4838f5b0ee68e4b7f68eb9"
    assert int(np.asarray(ds.truth.column("active")).sum()) == 45


def test_inactive_phenotype_is_seeded_and_touches_only_inactive_molecules():
    kw = dict(n_molecules=80, seed=3, embedding_dim=24, call_activity=False, progress=False)
    base = simulate(None, **kw, **V1)
    weak = simulate(None, **kw, **{**V1, "inactive_effect_scale": 0.4})
    again = simulate(None, **kw, **{**V1, "inactive_effect_scale": 0.4})
    xb, xw = base.phenomic_matrix(), weak.phenomic_matrix()
    assert np.array_equal(xw, again.phenomic_matrix())  # seeded
    assert base.wells.column("well_id").equals(weak.wells.column("well_id"))  # same layout
    t = weak.truth
    active_mols = set(np.asarray(t.column("molecule_id").to_pylist())[np.asarray(t.column("mechanism").to_pylist()) != "none"])
    mol = weak.wells.column("molecule_id").to_pylist()
    untouched = np.array([m is None or m in active_mols for m in mol])
    assert untouched.sum() > 0 and (~untouched).sum() > 0
    assert np.array_equal(xb[untouched], xw[untouched])  # controls and active molecules: bitwise
    diff = np.linalg.norm(xw[~untouched].astype(np.float64) - xb[~untouched], axis=1)
    assert (diff > 0).all()
    eff_b = np.asarray(base.truth.column("effect_norm").to_pylist())
    eff_w = np.asarray(t.column("effect_norm").to_pylist())
    inactive_rows = np.asarray(t.column("mechanism").to_pylist()) == "none"
    assert (eff_b[inactive_rows] == 0).all() and (eff_w[inactive_rows] > 0).all()
    # the truth labels keep their meaning: active molecules with an effect above threshold
    assert t.column("active").equals(base.truth.column("active"))
    assert weak.meta["measured"]["inactive_effect_to_noise_ratio"] > 0 == base.meta["measured"]["inactive_effect_to_noise_ratio"]


def test_shared_plate_map_layout():
    from molphenix.data.stats import well_addresses

    cfg = SimulatorConfig()
    assert cfg.plate_map == "shared" and cfg.position_scale > 0  # the defaults since 1.1
    ds = simulate(None, n_molecules=200, seed=4, embedding_dim=24, call_activity=False, progress=False)
    addr = well_addresses(ds)
    w = ds.wells
    plate = np.asarray(w.column("plate").to_pylist())
    batch = np.asarray(w.column("batch").to_pylist())
    lib = np.asarray(w.column("dataset").to_pylist())
    ctrl = ds.control_mask()
    # one well per (plate, address)
    assert len(set(zip(plate, addr))) == len(addr)
    # controls sit at the same addresses on every plate of a library, every batch has enough
    for l in set(lib):
        sets = {p: frozenset(addr[(plate == p) & ctrl]) for p in set(plate[lib == l])}
        assert len(set(sets.values())) == 1
    for b in set(batch):
        assert ctrl[batch == b].sum() >= cfg.min_controls_per_batch
    # replicates: distinct batches, and (almost always) one address
    mol = np.asarray(w.column("molecule_id").to_pylist(), dtype=object)
    conc = w.column("concentration_um").to_numpy(zero_copy_only=False)
    keys = {}
    for i in np.flatnonzero(~ctrl):
        keys.setdefault((mol[i], conc[i]), []).append(i)
    one_address = [len(set(addr[g])) == 1 for g in keys.values()]
    assert all(len(set(batch[g])) == len(g) for g in keys.values())
    assert np.mean(one_address) > 0.9
    reps = np.array([len(g) for g in keys.values()])
    assert reps.min() >= cfg.min_replicates and reps.max() <= cfg.max_replicates


def test_position_effect_makes_addresses_alike():
    from molphenix.data.stats import control_calibration, position_effects

    kw = dict(n_molecules=300, seed=6, embedding_dim=32, call_activity=False, progress=False)
    off = simulate(None, **kw, position_scale=0.0)
    on = simulate(None, **kw)
    assert off.wells.column("well_id").equals(on.wells.column("well_id"))  # the effect, not the layout
    p_off, p_on = position_effects(off, dataset_name="lib_a"), position_effects(on, dataset_name="lib_a")
    assert abs(p_off["address_controls"]) < 0.05
    assert p_on["address_controls"] > 0.15
    assert p_on["control_corr_same_address"] > p_on["control_corr_other_address"] + 0.1
    # control wells at one address pass for active samples more often than the cutoff
    cal = control_calibration(on, dataset_name="lib_a")
    assert cal["same_address"]["0.1"] > cal["random_address"]["0.1"]


def test_new_options_are_validated():
    for bad in (dict(plate_map="grid"), dict(position_scale=-1.0), dict(position_scale=float("nan")),
                dict(inactive_effect_scale=-0.1), dict(position_batch_share=1.5), dict(position_address_share=-0.1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SimulatorConfig(**bad)
