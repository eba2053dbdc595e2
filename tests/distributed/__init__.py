"""Tests of molphenix.distributed (a package, so its module names do not collide with tests/losses
and tests/train: import the launcher with ``from ._launch import run_ranks``)."""
