import sys, json, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, "tests/train")
from molphenix.data import simulate
from molphenix.train import fit, TrainConfig
from pathlib import Path
data = Path("/tmp/recipe/bw_data")
if not (data / "wells.parquet").exists():
    simulate(data, n_molecules=100, seed=5, embedding_dim=16, return_dataset=False)
out = Path(sys.argv[1])
for name, kw in (("steps", dict(steps=30)), ("samples", dict(samples=300))):
    cfg = TrainConfig(data=str(data), out=str(out / name), batch_size=16, threads=1, progress=False, overwrite=True,
        model_overrides=dict(phenomic_hidden=32, molecular_hidden=32, embed_dim=16, phenomic_blocks=1),
        featurizer_kwargs=dict(n_bits=256), lr=3e-3, **kw)
    fit(cfg, log=lambda s: None)
