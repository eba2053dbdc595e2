"""``embed-library`` under a 2-rank launch (gloo): the same library as one process, bit for bit,
and ``ShardedIndex.load`` / ``Index.load`` read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from ._launch import run_ranks


@pytest.fixture(scope="module")
def lib_env(tmp_path_factory):
    import rdkit

    from molphenix.data import simulate
    from molphenix.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("lib_launch")
    simulate(root / "data", n_molecules=30, seed=5, embedding_dim=16, progress=False)
    fit(TrainConfig(data=str(root / "data"), out=str(root / "run"), steps=4, batch_size=16,
                    threads=1, progress=False, eval_every=4,
                    model_overrides=dict(phenomic_hidden=32, molecular_hidden=32, embed_dim=16,
                                         phenomic_blocks=1),
                    featurizer_kwargs=dict(n_bits=256)), log=lambda m: None)
    lines = (Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi").read_text().splitlines()[:230]
    smiles = [line.split()[0] for line in lines]
    smiles[17] = "C1CC"
    pcsv.write_csv(pa.table({"smiles": smiles, "concentration_um": [1.0 + i % 3 for i in range(230)]}),
                   root / "mols.csv")
    return root


def _args(root: Path, out: Path):
    return ["embed-library", "--run", str(root / "run"), "--molecules", str(root / "mols.csv"),
            "--out", str(out), "--chunk-rows", "40", "--threads", "1", "--workers", "1", "--no-progress"]


def _rank_body(root: str):
    import torch.distributed as dist

    from molphenix.cli.main import main
    from molphenix.distributed import ShardedIndex

    r = Path(root)
    code = main(_args(r, r / "two"))
    dist.barrier()
    idx = ShardedIndex.load(r / "two")
    q = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    return code, dist.get_rank(), idx.offset, len(idx), idx.search(q, 7)


def test_two_ranks_write_the_library_of_one_process(lib_env):
    from molphenix.cli.main import main
    from molphenix.retrieval import Index

    root = lib_env
    results = run_ranks(_rank_body, 2, args=(str(root),), timeout_s=300)
    assert main(_args(root, root / "one")) == 0
    one, two = Index.load(root / "one"), Index.load(root / "two")
    assert len(one) == 229 and one.ids.tolist() == two.ids.tolist()
    blob = [b"".join(b.numpy().tobytes() for b in ix.storage.blocks) for ix in (one, two)]
    assert blob[0] == blob[1]
    assert (root / "one" / "rejects.csv").read_bytes() == (root / "two" / "rejects.csv").read_bytes()
    q = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    want = one.search(q, 7)
    offsets = []
    for code, rank, offset, n, (scores, ids) in results:
        assert code == 0 and n == 229
        offsets.append(offset)
        np.testing.assert_array_equal(scores, want[0])
        np.testing.assert_array_equal(ids, want[1])
    assert sorted(offsets) == [0, 115]
