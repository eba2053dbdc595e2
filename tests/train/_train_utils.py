"""Helpers of the training tests (imported by the test modules of tests/train)."""

from __future__ import annotations


def tiny_config(data, out, **kw):
    """A TrainConfig that trains in about a second: small heads, 256-bit fingerprints, 1 thread."""
    from molphenix.train import TrainConfig

    base = dict(
        data=str(data), out=str(out), steps=12, batch_size=16, threads=1, progress=False,
        model_overrides=dict(phenomic_hidden=32, molecular_hidden=32, embed_dim=16, phenomic_blocks=1),
        featurizer_kwargs=dict(n_bits=256), eval_every=6, lr=3e-3,
    )
    base.update(kw)
    return TrainConfig(**base)
