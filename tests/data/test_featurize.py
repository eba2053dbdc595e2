"""Featurizers: shapes, finiteness, caching, invalid SMILES, graph batching."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from molphenix.data import featurize as F

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C[N+](C)(C)C", "O=C(O)CCl", "C1CC1N", "[Na+].[Cl-]"]


@pytest.mark.parametrize(
    "featurizer,dim",
    [(F.MorganCounts(radius=2, n_bits=512), 512), (F.MACCSKeys(), 167), (F.RDKitDescriptors(), None)],
)
def test_matrix_featurizers(featurizer, dim):
    x = featurizer(SMILES)
    assert x.dtype == np.float32 and x.shape == (len(SMILES), dim or featurizer.dim)
    assert np.isfinite(x).all()
    assert (x[0] != x[1]).any()


def test_morgan_counts_are_counts():
    x = F.MorganCounts(radius=1, n_bits=2048)(["CCCCCC"])
    assert x.max() >= 2  # repeated environments are counted
    assert F.MorganCounts(log_counts=True)(["CCCCCC"]).max() == pytest.approx(np.log1p(F.MorganCounts()(["CCCCCC"]).max()))


def test_descriptors_standardised():
    f = F.RDKitDescriptors()
    x = f(SMILES)
    # standardised with the batch statistics: per-column mean ~0 where the column varies
    varying = x.std(0) > 1e-6
    np.testing.assert_allclose(x[:, varying].mean(0), 0, atol=1e-4)
    assert np.abs(x).max() <= f.clip
    f.fit(SMILES[:4])
    y = f(SMILES[4:])
    assert np.isfinite(y).all() and y.shape == (3, f.dim)


def test_cache_keyed_by_settings(tmp_path):
    f2 = F.MorganCounts(radius=2, n_bits=256)
    f3 = F.MorganCounts(radius=3, n_bits=256)
    a = F.featurize(SMILES, f2, cache_dir=tmp_path)
    b = F.featurize(SMILES, f3, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.parquet"))
    assert len(files) == 2 and all(n.startswith("morgan-") for n in files)
    # cached rows are returned (not recomputed): poison the featurizer and read again
    class Poisoned(F.MorganCounts):
        def compute(self, smiles, *, on_invalid="raise"):
            raise AssertionError(f"recomputed {smiles}")

    again = F.featurize(SMILES, Poisoned(radius=2, n_bits=256), cache_dir=tmp_path)
    np.testing.assert_array_equal(again, a)
    assert not np.array_equal(a, b)
    # a new SMILES extends the cache
    c = F.featurize(SMILES + ["CCN"], f2, cache_dir=tmp_path)
    assert c.shape == (len(SMILES) + 1, 256)
    assert "CCN" in F.FeatureCache(tmp_path).lookup(f2)


def test_descriptor_cache_round_trip(tmp_path):
    f = F.RDKitDescriptors(names=["MolWt", "TPSA", "NumHDonors"])
    a = F.featurize(SMILES, f, cache_dir=tmp_path)
    b = F.featurize(SMILES, f, cache_dir=tmp_path)
    np.testing.assert_allclose(a, b)


def test_invalid_smiles():
    with pytest.raises(F.InvalidSmilesError) as ei:
        F.MorganCounts()(["CCO", "C1CC", "CCC"])
    assert ei.value.index == 1 and isinstance(ei.value, ValueError)
    x = F.MACCSKeys()(["CCO", "not smiles"], on_invalid="zero")
    assert (x[1] == 0).all() and x[0].any()
    with pytest.raises(ValueError):
        F.get_featurizer("nope")


def test_embedding_column():
    mols = pa.table(
        {
            "molecule_id": ["a", "b"],
            "smiles": ["CCO", "CCN"],
            "molgps": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 3),
        }
    )
    f = F.EmbeddingColumn(mols, "molgps")
    np.testing.assert_array_equal(f(["CCN", "CCO"]), [[3, 4, 5], [0, 1, 2]])
    with pytest.raises(KeyError):
        f(["CCC"])


def test_graphs_and_batching():
    g = F.GraphFeaturizer()
    graphs = g(["CCO", "c1ccccc1", "C"])
    assert graphs[0].x.shape == (3, g.ATOM_DIM)
    assert graphs[0].edge_index.shape == (2, 4)  # 2 bonds, both directions
    assert graphs[1].edge_attr.shape == (12, g.BOND_DIM) and graphs[1].edge_attr[:, 3].all()  # aromatic
    assert graphs[2].edge_index.shape == (2, 0)  # methane: no bonds
    b = F.collate_graphs(graphs)
    assert b.num_graphs == 3
    assert b.x.shape == (10, g.ATOM_DIM)
    assert b.batch.tolist() == [0, 0, 0] + [1] * 6 + [2]
    assert b.edge_index.shape == (2, 16)
    assert int(b.edge_index[:, 4:].min()) >= 3  # benzene edges offset past ethanol's atoms
    assert int(b.edge_index.max()) < 10
    # edges stay within their graph
    assert (b.batch[b.edge_index[0]] == b.batch[b.edge_index[1]]).all()
    import torch

    assert b.x.dtype == torch.float32 and b.edge_index.dtype == torch.int64
    with pytest.raises(ValueError):
        F.collate_graphs([])
    with pytest.raises(ValueError):
        F.collate_graphs(g(["CCO", "C1CC"], on_invalid="zero"))


def test_graph_cache(tmp_path):
    a = F.featurize_graphs(SMILES, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("graph-*.parquet"))) == 1

    class Poisoned(F.GraphFeaturizer):
        def __call__(self, smiles, *, on_invalid="raise"):
            raise AssertionError("recomputed")

    b = F.featurize_graphs(SMILES, cache_dir=tmp_path, featurizer=Poisoned())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.edge_index, y.edge_index)
        np.testing.assert_array_equal(x.edge_attr, y.edge_attr)
    c = F.featurize_graphs(["CCO", "bad("], cache_dir=tmp_path, on_invalid="zero")
    assert c[1] is None and c[0].num_atoms == 3
