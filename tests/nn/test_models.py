"""molphenix.nn: heads, concentration encodings, the message-passing network, configs, factory."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from _utils import assert_close, randn
import molphenix
from molphenix import nn as mnn
from molphenix.data.featurize import GraphBatch, GraphFeaturizer, collate_graphs, featurize_graphs

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C1CCNCC1", "O=C(O)c1ccccc1OC(C)=O"]


def small(**kw):
    torch.manual_seed(0)
    return mnn.create_model("molphenix-small", phenomic_dim=12, molecular_dim=20, **kw)


# ---------------------------------------------------------------------------------------------
# blocks and heads
# ---------------------------------------------------------------------------------------------


def test_residual_block_formula():
    torch.manual_seed(0)
    blk = mnn.ResidualBlock(8, dropout=0.5).double().eval()
    x = randn((4, 8), seed=1)
    expected = x + blk.fc2(F.gelu(blk.fc1(F.layer_norm(x, (8,), blk.norm.weight, blk.norm.bias))))
    assert_close(blk(x), expected, dtype=torch.float64)


@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_head_output_unit_norm(blocks):
    torch.manual_seed(0)
    head = mnn.PhenomicHead(7, 16, blocks, 5, dropout=0.1)
    y = head(randn((6, 7), seed=2, dtype=torch.float32) * 100)
    assert y.shape == (6, 5)
    assert_close(y.norm(dim=1), torch.ones(6), dtype=torch.float32)
    assert len(head.blocks) == blocks
    with pytest.raises(ValueError, match=r"expected input \[B, 7\]"):
        head(torch.zeros(3, 8))


def test_model_encoders_unit_norm_and_shapes():
    m = small().eval()
    x = randn((5, 12), seed=3, dtype=torch.float32)
    mol = torch.rand(5, 20)
    conc = torch.tensor([0.25, 1.0, 2.5, 10.0, 3.0])
    p, q = m.encode_wells(x), m.encode_molecules(mol, conc)
    assert p.shape == q.shape == (5, 256)
    assert_close(p.norm(dim=1), torch.ones(5), dtype=torch.float32)
    assert_close(q.norm(dim=1), torch.ones(5), dtype=torch.float32)
    p2, q2 = m(x, mol, conc)
    assert torch.equal(p, p2) and torch.equal(q, q2)
    assert m.embed_dim == 256


def test_model_gradients_reach_every_parameter():
    m = small()
    p = m.encode_wells(randn((6, 12), seed=4, dtype=torch.float32))
    q = m.encode_molecules(torch.rand(6, 20), torch.rand(6) * 10)
    (p * q).sum().backward()
    for name, prm in m.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name


def test_concentration_changes_molecule_embedding():
    m = small().eval()
    mol = torch.rand(1, 20).repeat(2, 1)
    q = m.encode_molecules(mol, torch.tensor([0.1, 10.0]))
    assert not torch.allclose(q[0], q[1])
    m0 = small(concentration="none").eval()
    q0 = m0.encode_molecules(mol, torch.tensor([0.1, 10.0]))
    assert torch.equal(q0[0], q0[1])
    assert m0.molecular_head.in_dim == 20


def test_encode_errors():
    m = small()
    with pytest.raises(ValueError, match=r"^x: expected phenomic inputs \[B, 12\]"):
        m.encode_wells(torch.zeros(3, 11))
    with pytest.raises(ValueError, match=r"^mol: expected molecular features \[B, 20\]"):
        m.encode_molecules(torch.zeros(3, 19), torch.ones(3))
    with pytest.raises(ValueError, match="^conc_um: expected 3 concentrations"):
        m.encode_molecules(torch.zeros(3, 20), torch.ones(4))
    with pytest.raises(ValueError, match="^conc_um: concentrations must be non-negative"):
        m.encode_molecules(torch.zeros(2, 20), torch.tensor([1.0, -1.0]))
    g = collate_graphs(featurize_graphs(SMILES[:2]))
    with pytest.raises(ValueError, match="^mol: expected a tensor"):
        m.encode_molecules(g, torch.ones(2))
    mg = mnn.create_model("molphenix-graph-small", phenomic_dim=4)
    with pytest.raises(ValueError, match="^mol: this model has mol_input='graph'"):
        mg.encode_molecules(torch.zeros(2, 20), torch.ones(2))


# ---------------------------------------------------------------------------------------------
# concentration encodings
# ---------------------------------------------------------------------------------------------


def test_concentration_onehot_nearest_and_zero():
    doses = [0.25, 1.0, 2.5, 10.0]
    conc = torch.tensor([1.0, 10.0, 0.25, 2.5, 3.0, 100.0, 0.001, 0.5])
    near = mnn.ConcentrationEncoder(["onehot"], doses=doses)(conc)
    expected_idx = [1, 3, 0, 2, 2, 3, 0, 0]  # 0.5 is nearer 0.25 than 1.0 in log10 space
    assert near.shape == (8, 4) and near.dtype == torch.float32
    assert near.argmax(1).tolist() == expected_idx and near.sum(1).tolist() == [1.0] * 8
    zero = mnn.ConcentrationEncoder(["onehot"], doses=doses, unknown="zero")(conc)
    assert zero[:4].argmax(1).tolist() == [1, 3, 0, 2]
    assert zero.sum(1).tolist() == [1.0] * 4 + [0.0] * 4
    # doses given unsorted: columns follow the sorted dose order
    unsorted = mnn.ConcentrationEncoder(["onehot"], doses=[10.0, 0.25, 2.5, 1.0])(conc)
    assert torch.equal(unsorted, near)
    # exact tie in log10 space (geometric mean of 1 and 100 = 10 with doses 1 and 100): lower dose
    tie = mnn.ConcentrationEncoder(["onehot"], doses=[1.0, 100.0])(torch.tensor([10.0], dtype=torch.float64))
    assert tie.tolist() == [[1.0, 0.0]]


def test_concentration_log10_sigmoid_and_combos():
    conc = torch.tensor([0.01, 1.0, 10.0, 0.0], dtype=torch.float64)
    enc = mnn.ConcentrationEncoder(["log10", "sigmoid"], sigmoid_centers=[-1.0, 0.0, 1.0], sigmoid_slope=2.0)
    y = enc(conc)
    assert enc.dim == 4 and y.shape == (4, 4) and y.dtype == torch.float64
    logc = torch.log10(conc.clamp_min(1e-6))
    assert_close(y[:, 0], logc, dtype=torch.float64)
    for k, center in enumerate([-1.0, 0.0, 1.0]):
        assert_close(y[:, 1 + k], 1.0 / (1.0 + torch.exp(-2.0 * (logc - center))), dtype=torch.float64)
    assert mnn.ConcentrationEncoder([])(conc).shape == (4, 0)
    full = mnn.ConcentrationEncoder(["onehot", "log10", "sigmoid"], doses=[1.0, 10.0])
    assert full.dim == 2 + 1 + 6 and full(conc[:, None]).shape == (4, 9)


def test_onehot_model_needs_doses():
    with pytest.raises(ValueError, match="^doses:"):
        small(concentration="onehot+log10")
    m = small(concentration="onehot+log10", doses=[0.25, 1.0, 2.5, 10.0])
    assert m.concentration_encoder.dim == 5
    assert m.molecular_head.in_dim == 25


# ---------------------------------------------------------------------------------------------
# message passing
# ---------------------------------------------------------------------------------------------


def permute_atoms(g, perm):
    """Renumber the atoms of one MolGraph: new atom k is old atom perm[k]."""
    import numpy as np

    from molphenix.data.featurize import MolGraph

    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    edge_order = np.random.default_rng(0).permutation(g.edge_index.shape[1])
    return MolGraph(x=g.x[perm], edge_index=inv[g.edge_index][:, edge_order],
                    edge_attr=g.edge_attr[edge_order])


@pytest.mark.parametrize("pool", ["sum", "mean", "sum+mean"])
def test_mpnn_runs_and_is_permutation_invariant(pool):
    import numpy as np

    graphs = featurize_graphs(SMILES)
    torch.manual_seed(0)
    net = mnn.MPNNEncoder(GraphFeaturizer.ATOM_DIM, GraphFeaturizer.BOND_DIM, hidden=16, rounds=3,
                          pool=pool).double()
    out = net(collate_graphs(graphs))
    assert out.shape == (len(SMILES), net.out_dim) and net.out_dim == (32 if pool == "sum+mean" else 16)
    rng = np.random.default_rng(1)
    perm_graphs = [permute_atoms(g, rng.permutation(g.num_atoms)) for g in graphs]
    assert_close(net(collate_graphs(perm_graphs)), out, dtype=torch.float64, msg="atom permutation")
    # a graph's embedding does not depend on the other graphs of the batch
    alone = net(collate_graphs([graphs[2]]))
    assert_close(alone[0], out[2], dtype=torch.float64, msg="batch composition")
    # graph order permutes the rows
    assert_close(net(collate_graphs(graphs[::-1])), out.flip(0), dtype=torch.float64)


def test_graph_model_end_to_end_and_gradients():
    torch.manual_seed(0)
    m = mnn.create_model("molphenix-graph-small", phenomic_dim=6)
    g = collate_graphs(featurize_graphs(SMILES))
    q = m.encode_molecules(g, torch.full((len(SMILES),), 1.0))
    assert q.shape == (len(SMILES), 256)
    assert_close(q.norm(dim=1), torch.ones(len(SMILES)), dtype=torch.float32)
    q.sum().backward()
    assert all(p.grad is not None for p in m.graph_encoder.parameters())
    # a single-atom molecule (no bonds) works
    q1 = m.encode_molecules(collate_graphs(featurize_graphs(["C"])), torch.ones(1))
    assert torch.isfinite(q1).all()


def test_mpnn_rejects_bad_batches():
    net = mnn.MPNNEncoder(GraphFeaturizer.ATOM_DIM, GraphFeaturizer.BOND_DIM, hidden=8)
    g = collate_graphs(featurize_graphs(SMILES[:2]))
    with pytest.raises(ValueError, match="^graphs.x"):
        net(GraphBatch(g.x[:, :-1], g.edge_index, g.edge_attr, g.batch, 2))
    with pytest.raises(ValueError, match="^graphs.batch"):
        net(GraphBatch(g.x, g.edge_index, g.edge_attr, g.batch, 1))


# ---------------------------------------------------------------------------------------------
# configs and the factory
# ---------------------------------------------------------------------------------------------


def test_shipped_configs():
    names = mnn.list_models()
    assert {"molphenix-small", "molphenix-paper"} <= set(names)
    for name in names:
        cfg = mnn.get_model_config(name)
        assert cfg.name == name
        assert cfg.phenomic_dim == 0 and cfg.molecular_dim == 0  # filled in from data
    paper = mnn.get_model_config("molphenix-paper")
    assert (paper.phenomic_blocks, paper.molecular_blocks, paper.embed_dim) == (6, 1, 512)
    assert mnn.CONFIG_DIR.parent.name == "nn" and (mnn.CONFIG_DIR / "molphenix-small.json").is_file()


def test_paper_model_builds():
    m = mnn.create_model("molphenix-paper", phenomic_dim=384, molecular_dim=2048)
    assert len(m.phenomic_head.blocks) == 6 and len(m.molecular_head.blocks) == 1
    assert m.encode_wells(torch.zeros(2, 384)).shape == (2, 512)


def test_config_round_trip(tmp_path):
    cfg = mnn.get_model_config("molphenix-small", phenomic_dim=7, molecular_dim=9,
                               concentration="onehot+sigmoid", doses=[1, 3.0])
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert mnn.ModelConfig.from_dict(d) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert mnn.ModelConfig.from_json(tmp_path / "c.json") == cfg
    assert mnn.get_model_config(tmp_path / "c.json") == cfg
    assert cfg.doses == [1.0, 3.0]
    # a model rebuilt from its config dict loads the state dict and computes the same thing
    torch.manual_seed(0)
    a = mnn.MolPhenixModel(cfg).eval()
    b = mnn.MolPhenixModel(a.config.to_dict()).eval()
    b.load_state_dict(a.state_dict())
    x, mol, c = torch.randn(3, 7), torch.rand(3, 9), torch.tensor([1.0, 3.0, 2.0])
    assert torch.equal(a.encode_wells(x), b.encode_wells(x))
    assert torch.equal(a.encode_molecules(mol, c), b.encode_molecules(mol, c))


def test_create_model_overrides():
    m = mnn.create_model("molphenix-small", phenomic_dim=10, molecular_dim=30, embed_dim=64,
                         phenomic_blocks=1, dropout=0.0, mol_input="column:emb")
    assert m.config.embed_dim == 64 and len(m.phenomic_head.blocks) == 1
    assert m.config.phenomic_dim == 10 and m.config.mol_input == "column:emb"
    assert m.encode_molecules(torch.zeros(2, 30), torch.ones(2)).shape == (2, 64)
    with pytest.raises(ValueError, match="^foo: unknown model config key"):
        mnn.create_model("molphenix-small", phenomic_dim=10, molecular_dim=30, foo=1)
    with pytest.raises(ValueError, match="^name: unknown model 'nope'"):
        mnn.create_model("nope")
    with pytest.raises(ValueError, match="^phenomic_dim: must be set"):
        mnn.create_model("molphenix-small")
    with pytest.raises(ValueError, match="^molecular_dim: must be set"):
        mnn.create_model("molphenix-small", phenomic_dim=10)


@pytest.mark.parametrize("field,value", [
    ("embed_dim", 0), ("embed_dim", 1.5), ("phenomic_hidden", -1), ("phenomic_blocks", -1),
    ("molecular_blocks", True), ("phenomic_dim", -3), ("dropout", 1.0), ("dropout", "0.1"),
    ("mol_input", "smiles"), ("mol_input", "column:"), ("concentration", "onehot+cubic"),
    ("concentration", "none+log10"), ("concentration", "log10+log10"), ("doses", [1.0, -2.0]),
    ("doses", "1,2"), ("doses", [1.0, 1.0]), ("onehot_unknown", "drop"), ("sigmoid_slope", 0.0),
    ("sigmoid_centers", [float("nan")]), ("mpnn_rounds", 0), ("mpnn_pool", "max"), ("name", 3),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        mnn.get_model_config("molphenix-small", **{field: value})
    with pytest.raises(ValueError, match=f"^{field}:"):
        mnn.ModelConfig.from_dict({**mnn.ModelConfig().to_dict(), field: value})


def test_config_cross_field_checks():
    with pytest.raises(ValueError, match="^molecular_dim: must be 0 with mol_input='graph'"):
        mnn.ModelConfig(mol_input="graph", molecular_dim=5)
    with pytest.raises(ValueError, match="^sigmoid_centers:"):
        mnn.ModelConfig(sigmoid_centers=[])
    assert mnn.ModelConfig(concentration="log10", sigmoid_centers=[]).concentration_kinds() == ["log10"]
    with pytest.raises(ValueError, match="^bogus: unknown model config key"):
        mnn.ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(TypeError):
        mnn.ModelConfig.from_dict([("embed_dim", 3)])


def test_top_level_lazy_exports():
    assert molphenix.list_models() == mnn.list_models()
    m = molphenix.create_model("molphenix-small", phenomic_dim=3, molecular_dim=4)
    assert isinstance(m, mnn.MolPhenixModel)
    code = "import sys, molphenix; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
