"""Fixtures for the training tests: one tiny simulated dataset per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny simulation (E = 16) with activity calls and two libraries."""
    from molphenix.data import simulate

    out = tmp_path_factory.mktemp("train_sim") / "ds"
    simulate(out, n_molecules=100, seed=5, embedding_dim=16, return_dataset=False)
    return out
