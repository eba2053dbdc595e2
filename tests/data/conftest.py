"""Shared fixtures for the data-layer tests: small simulations, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory) -> Path:
    """A small simulation at default parameters (except size), with activity calls."""
    from molphenix.data import simulate

    out = tmp_path_factory.mktemp("sim") / "ds"
    simulate(out, n_molecules=400, seed=7, return_dataset=False)
    return out


@pytest.fixture(scope="session")
def sim(sim_dir):
    from molphenix.data import load_dataset

    return load_dataset(sim_dir)


@pytest.fixture(scope="session")
def sim_exchangeable(tmp_path_factory):
    """Like ``sim`` without well-position effects (``position_scale=0``): wells of a dataset
    are exchangeable given their batch, which is what the activity caller's null assumes."""
    from molphenix.data import load_dataset, simulate

    out = tmp_path_factory.mktemp("sim_exch") / "ds"
    simulate(out, n_molecules=400, seed=7, position_scale=0.0, return_dataset=False)
    return load_dataset(out)


@pytest.fixture(scope="session")
def tiny_sim_dir(tmp_path_factory) -> Path:
    """A tiny simulation without activity calls (schema / io tests)."""
    from molphenix.data import simulate

    out = tmp_path_factory.mktemp("tiny") / "ds"
    simulate(out, n_molecules=40, seed=3, embedding_dim=16, call_activity=False, return_dataset=False)
    return out


@pytest.fixture()
def tiny(tiny_sim_dir):
    from molphenix.data import load_dataset

    return load_dataset(tiny_sim_dir)
