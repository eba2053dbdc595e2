"""The ridge anchor: the dual solve, the implicit Gram matrix, and recovery of a linear map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _utils import assert_close
from molphenix.baselines import RidgeConfig, RidgeModel, fit_ridge
from molphenix.eval.queries import split_queries
from molphenix.baselines.ridge import _dose_onehot, _gram, _pair_features, solve_ridge_dual


def _phi(f: np.ndarray, e: np.ndarray, lg: np.ndarray) -> np.ndarray:
    """The explicit design [f, f*e_1, ..., f*e_K, e, log10 c]."""
    return np.concatenate([f] + [f * e[:, k:k + 1] for k in range(e.shape[1])] + [e, lg[:, None]], axis=1)


def test_solve_ridge_dual_matches_the_primal_closed_form():
    g = np.random.default_rng(0)
    X = g.normal(size=(40, 7))
    Y = g.normal(size=(40, 3))
    K = torch.as_tensor(X @ X.T)
    for lam, A in zip((0.1, 10.0), solve_ridge_dual(K, torch.as_tensor(Y), (0.1, 10.0))):
        W_primal = np.linalg.solve(X.T @ X + lam * np.eye(7), X.T @ Y)
        assert_close(torch.as_tensor(X.T @ A.numpy()), torch.as_tensor(W_primal), dtype=torch.float64)


def test_gram_of_the_block_design_without_forming_it():
    g = np.random.default_rng(1)
    f = g.poisson(1.0, size=(9, 5)).astype(np.float64)
    conc = g.choice([0.25, 1.0, 2.5, 10.0], size=9)
    e = _dose_onehot(conc, np.array([0.25, 1.0, 2.5, 10.0]))
    lg = np.log10(conc)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    P = _phi(f, e, lg)
    assert_close(_gram(t(f), t(e), t(lg), t(f), t(e), t(lg)), t(P @ P.T), dtype=torch.float64)


def test_dose_onehot_nearest_in_log_space():
    doses = np.array([0.25, 1.0, 2.5, 10.0])
    e = _dose_onehot(np.array([0.25, 0.3, 4.0, 6.0, 100.0]), doses)
    assert e.argmax(1).tolist() == [0, 0, 2, 3, 3]
    with pytest.raises(ValueError, match="concentration_um"):
        _dose_onehot(np.array([0.0]), doses)


@pytest.fixture(scope="module")
def linear_dataset(tmp_path_factory):
    """A simulated layout whose treated wells are an exact linear function of the ridge design
    (plus per-batch offsets that the control centring removes)."""
    import pyarrow as pa

    from molphenix.data import from_tables, make_splits, simulate
    from molphenix.data.featurize import get_featurizer
    from molphenix.data.loaders._common import embedding_array

    ds = simulate(tmp_path_factory.mktemp("sim"), n_molecules=80, seed=3, progress=False)
    splits = make_splits(ds, seed=0)
    train = split_queries(ds, splits.indices("train"), ds.calls)
    doses = np.unique(train["concentration"])
    fz = get_featurizer("morgan")
    smiles_of = ds.smiles_of()

    def design(mol, conc):
        f = _pair_features(smiles_of, list(mol), fz).astype(np.float64)
        return _phi(f, _dose_onehot(conc, doses), np.log10(conc))

    P = design(train["molecule"], train["concentration"])
    Pc = P - P.mean(0)
    g = np.random.default_rng(0)
    E = ds.embedding_dim
    W = Pc.T @ g.normal(size=(P.shape[0], E)) / P.shape[0]  # in the row space: identifiable
    c0 = g.normal(size=E)

    is_ctrl = ds.control_mask()
    batch = np.asarray(ds.column("batch"), dtype=object)
    names = sorted(set(batch.tolist()))
    offset = {b: g.normal(size=E) * 3.0 for b in names}
    x = np.stack([offset[b] for b in batch])
    rows = np.flatnonzero(~is_ctrl)
    mol = np.asarray(ds.column("molecule_id"), dtype=object)[rows]
    conc = np.asarray(ds.column("concentration_um"), dtype=np.float64)[rows]
    x[rows] += design(mol, conc) @ W + c0
    wells = ds.wells.set_column(ds.wells.schema.get_field_index("phenomic"), "phenomic",
                                embedding_array(x.astype(np.float32)))
    lin = from_tables(wells, ds.molecules, calls=ds.calls, truth=ds.truth)
    return lin, splits, (lambda m, c: design(m, c) @ W + c0)


def test_ridge_recovers_a_linear_map(linear_dataset, tmp_path):
    ds, splits, truth = linear_dataset
    res = fit_ridge(ds, splits, config=RidgeConfig(alphas=(1e-9,), n_bootstrap=0), out=tmp_path)
    q = split_queries(ds, splits.indices("unseen_molecules"), ds.calls)
    smiles_of = ds.smiles_of()
    pred = res.model.predict(res.model.molecule_features([smiles_of[m] for m in q["molecule"]]),
                             q["concentration"]).double().numpy()
    want = truth(q["molecule"], q["concentration"])
    err = np.abs(pred - want).max() / np.abs(want).max()
    assert err < 1e-3, err
    # every query's own prediction is its exact direction: rank 0 for all of them
    for split in ("unseen_wells", "unseen_molecules"):
        assert res.metrics[split]["all"]["top1"] == 1.0
    # saved and reloaded: the same predictions
    again = RidgeModel.load(tmp_path)
    got = again.embed_molecules([smiles_of[m] for m in q["molecule"][:5]], q["concentration"][:5])
    ref = res.model.embed_molecules([smiles_of[m] for m in q["molecule"][:5]], q["concentration"][:5])
    assert torch.equal(got, ref)
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "ridge_grid.json").is_file()


def test_ridge_alpha_is_chosen_on_validation(linear_dataset):
    ds, splits, _ = linear_dataset
    res = fit_ridge(ds, splits, config=RidgeConfig(alphas=(1e-9, 1e6), n_bootstrap=0))
    assert [e["alpha"] for e in res.grid["entries"]] == [1e-9, 1e6]
    assert res.grid["chosen_alpha"] in (1e-9, 1e6)
    assert set(res.metrics) <= {"val", "unseen_wells", "unseen_molecules", "unseen_dataset"}


def test_ridge_config_errors():
    with pytest.raises(ValueError, match="alphas"):
        RidgeConfig(alphas=(0.0,))
    with pytest.raises(ValueError, match="p_cutoff"):
        RidgeConfig(p_cutoff=0.0)
