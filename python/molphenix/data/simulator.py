"""The embedded default data: a seeded, offline phenomolecular screen simulator.

Model (all parameters in :class:`SimulatorConfig`, recorded in ``meta.json``; see
``docs/design/data.md`` for the rationale and the measured effect/noise/batch ratios):

1. **Molecules.** Real SMILES shipped in RDKit's wheel: the WEHI PAINS test set (library A,
   the training library) and the NCI "first 5K" set (library B, the unseen dataset, measured in
   its own batches). Each SMILES is reduced to its largest fragment and canonicalised.
2. **Hidden structure map.** ``z = normalize(log1p(MorganCounts_r2_2048(m))) @ A`` with a
   seeded Gaussian ``A`` (d_s = 16): molecules with similar fingerprints get similar ``z``.
   Activity score = a random one-hidden-layer tanh network of ``z`` (smooth, nonlinear) plus
   seeded weights on a few functional groups (SMARTS): adding or removing such a group jumps
   the score — activity cliffs. The top ``active_fraction`` of scores are active molecules.
   Mechanism = argmax of ``z`` against K seeded prototypes. Potency: ``log10 EC50`` is a smooth
   function of ``z`` plus noise; Hill slope log-normal.
3. **Dose-response.** Response ``r(c) = c^h / (c^h + EC50^h)`` at 0.25/1/2.5/10 µM. Latent
   effect ``e = A_m · r · normalize((1 - ω) v1_k + ω v2_k + η u_m)`` with ``ω = dose_shift · r²``:
   the phenotype direction turns from the mechanism's primary direction ``v1_k`` towards a
   high-dose direction ``v2_k`` as the dose rises; ``u_m`` is a structure-dependent tweak.
4. **Wells.** latent ``y = y0 + library shift + batch shift + plate shift + e + ε`` with
   anisotropic well noise ``ε`` (decaying spectrum, E‖ε‖² = 1). A fixed random 2-layer GELU MLP
   (the "pretrained encoder", seeded by ``encoder_seed``, independent of ``seed``) maps it to E
   dims; then a per-batch gain and offset in embedding space and small isotropic measurement
   noise. Replicates of a (molecule, concentration) go to distinct batches; every batch holds
   control wells (~``control_fraction``).
5. **Truth.** ``active`` per (molecule, concentration) iff the molecule is active and its latent
   effect norm ``A_m · r(c)`` is at least ``active_effect_threshold`` (in units of the per-well
   latent noise norm).

Generation runs batch by batch and streams to Parquet, so memory is bounded by one batch plus
per-molecule state. Same seed and parameters -> byte-identical Parquet files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import wells_schema

__all__ = ["SimulatorConfig", "simulate", "SIMULATOR_VERSION", "load_library_smiles", "summary"]

SIMULATOR_VERSION = "1.1"
LIBRARY_A = "lib_a"
LIBRARY_B = "lib_b"

#: Functional groups whose presence shifts the activity score (activity cliffs).
CLIFF_SMARTS: dict[str, str] = {
    "carboxylic_acid": "[CX3](=O)[OX2H1,OX1-]",
    "nitro": "[N+](=O)[O-]",
    "primary_amine": "[NX3;H2][CX4]",
    "sulfonamide": "S(=O)(=O)[NX3]",
    "phenol": "c[OX2H]",
    "aryl_halide": "c[F,Cl,Br,I]",
    "ester": "[CX3](=O)[OX2][#6]",
    "basic_tertiary_amine": "[NX3;H0;!$(NC=[O,S,N]);!$(N-a)]([#6])([#6])[#6]",
    "michael_acceptor": "[CX3]=[CX3][CX3]=O",
    "thiophene": "c1ccsc1",
}


@dataclass(frozen=True)
class SimulatorConfig:
    """Every simulator parameter. Fixed by design (docs/design/data.md); never tune these to
    favour a method.

    Attributes:
        n_molecules: Molecules in total (both libraries).
        second_library_fraction: Fraction of molecules in library B (the unseen dataset);
            0 gives a single-dataset simulation.
        concentrations_um: Doses.
        min_replicates, max_replicates: Replicate wells per (molecule, dose), uniform.
        embedding_dim: E.
        latent_dim: Dimension of the latent cell state.
        structure_dim: Dimension d_s of the hidden structure coordinates.
        n_mechanisms: K mechanism prototypes.
        active_fraction: Fraction of molecules with a non-zero effect.
        cliff_scale: Std of the functional-group (cliff) weights on the activity score.
        effect_scale: Median maximal effect norm A_m, in units of the per-well latent noise norm.
        effect_spread: Log-normal sigma of A_m around effect_scale (and of the weak effects
            around inactive_effect_scale).
        inactive_effect_scale: Median maximal effect norm of the molecules *outside* the
            active set (sub-threshold phenotypes: real screens' inactive samples replicate,
            see docs/design/data.md), in the same units; same dose-response and direction
            model as the actives, amplitudes drawn from their own RNG stream. 0 gives
            inactive molecules no effect at all (simulator 1.0, bitwise).
        potency_log10_ec50_mean: Mean log10 EC50 (µM).
        potency_structure_amplitude: Amplitude of the smooth structure term of log10 EC50.
        potency_noise: Std of the molecule-specific log10 EC50 noise.
        hill_median, hill_spread: Hill slope log-normal parameters.
        dose_shift: ω = dose_shift·r² (phenotype direction turning with dose).
        molecule_direction_weight: η, weight of the structure-specific direction.
        effect_noise_alignment: α in [0, 1]. Effect directions are drawn as unit(g·T) with
            T = √α·L + √(1-α)·I/√d (L: the well-noise factor, Σ = LᵀL, tr Σ = 1): α = 1 draws
            them from the well-noise distribution (effects lie along typical-variation axes,
            so effect/noise ratios mean the same in Euclidean and TVN-whitened space); α = 0
            draws them isotropically.
        active_effect_threshold: Truth ``active`` iff A_m·r(c) >= this (noise units).
        noise_decay: Well-noise spectrum s_i ∝ exp(-i / noise_decay).
        batch_scale: Latent batch-shift norm (noise units).
        plate_scale: Latent plate-shift norm.
        library_shift_scale: Latent shift of library B relative to A.
        batch_gain_sd: Std of the per-batch multiplicative gain in embedding space.
        batch_offset_scale: Norm of the per-batch additive embedding offset, relative to the
            per-well embedding noise norm measured at design time (see docs).
        measurement_noise: Per-dimension std of isotropic embedding-space noise, relative to
            the per-dimension embedding noise scale.
        encoder_hidden: Hidden width of the fixed encoder MLP.
        encoder_gain: Input gain of the encoder's first layer (controls its nonlinearity).
        encoder_seed: Seed of the fixed encoder (the same for every simulation).
        baseline_norm: Norm of the unperturbed latent cell state y0.
        plate_map: ``"random"`` (every batch's wells shuffled onto its plates: replicates sit at
            unrelated addresses; simulator 1.0) or ``"shared"`` (one plate map per library, as
            in screens whose replicate plates share a layout: each (molecule, dose) has one
            home address that its replicate wells occupy on their plates, and control wells
            occupy a fixed ``control_fraction`` of the addresses of every plate).
        position_scale: Norm of the latent well-position effect (noise units): a shift per
            plate address made of a row term, a column term and an address-specific term,
            the same on every plate of a library (partly redrawn per batch). 0: none.
        position_address_share: Share of the position variance that is address-specific
            (the rest is split equally between the row and the column terms).
        position_batch_share: Share of the position variance redrawn for every batch (the
            rest is shared by all batches of a library).
        control_fraction: Target fraction of control wells per batch.
        min_controls_per_batch: Lower bound on controls per batch.
        treated_wells_per_batch: Target treated wells per batch (sets the batch count).
        plate_size: Wells per plate (384: rows A-P, columns 1-24).
    """

    n_molecules: int = 1000
    second_library_fraction: float = 0.2
    concentrations_um: tuple[float, ...] = (0.25, 1.0, 2.5, 10.0)
    min_replicates: int = 2
    max_replicates: int = 4
    embedding_dim: int = 384
    latent_dim: int = 32
    structure_dim: int = 16
    n_mechanisms: int = 8
    active_fraction: float = 0.25
    cliff_scale: float = 0.6
    effect_scale: float = 2.0
    effect_spread: float = 0.25
    inactive_effect_scale: float = 0.0
    potency_log10_ec50_mean: float = 0.3
    potency_structure_amplitude: float = 0.6
    potency_noise: float = 0.25
    hill_median: float = 1.2
    hill_spread: float = 0.25
    dose_shift: float = 0.7
    molecule_direction_weight: float = 0.5
    effect_noise_alignment: float = 1.0
    active_effect_threshold: float = 0.5
    noise_decay: float = 8.0
    batch_scale: float = 1.5
    plate_scale: float = 0.3
    library_shift_scale: float = 1.0
    batch_gain_sd: float = 0.05
    batch_offset_scale: float = 0.5
    measurement_noise: float = 0.2
    encoder_hidden: int = 512
    encoder_gain: float = 1.5
    encoder_seed: int = 20240917
    baseline_norm: float = 2.0
    plate_map: str = "shared"
    position_scale: float = 1.15
    position_address_share: float = 0.05
    position_batch_share: float = 0.3
    control_fraction: float = 0.1
    min_controls_per_batch: int = 16
    treated_wells_per_batch: int = 1380
    plate_size: int = 384

    def __post_init__(self) -> None:
        if self.n_molecules < 2:
            raise ValueError(f"n_molecules must be >= 2, got {self.n_molecules}")
        if not 0 <= self.second_library_fraction < 1:
            raise ValueError("second_library_fraction must lie in [0, 1)")
        if not self.concentrations_um or any(c <= 0 for c in self.concentrations_um):
            raise ValueError("concentrations_um must be non-empty and positive")
        if not 1 <= self.min_replicates <= self.max_replicates:
            raise ValueError("need 1 <= min_replicates <= max_replicates")
        if not 0 < self.control_fraction < 1:
            raise ValueError("control_fraction must lie in (0, 1)")
        if not 0 < self.active_fraction < 1:
            raise ValueError("active_fraction must lie in (0, 1)")
        if self.plate_size != 384:
            raise ValueError("plate_size must be 384 (16 x 24 addresses)")
        if not (math.isfinite(self.inactive_effect_scale) and self.inactive_effect_scale >= 0):
            raise ValueError(f"inactive_effect_scale must be finite and >= 0, got {self.inactive_effect_scale}")
        if self.plate_map not in ("random", "shared"):
            raise ValueError(f"plate_map must be 'random' or 'shared', got {self.plate_map!r}")
        if not (math.isfinite(self.position_scale) and self.position_scale >= 0):
            raise ValueError(f"position_scale must be finite and >= 0, got {self.position_scale}")
        for name in ("position_address_share", "position_batch_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.embedding_dim < 1 or self.latent_dim < 2:
            raise ValueError("embedding_dim >= 1 and latent_dim >= 2 required")

    def to_dict(self) -> dict[str, Any]:
        """All parameters as a JSON-able dict."""
        d = dataclasses.asdict(self)
        d["concentrations_um"] = list(self.concentrations_um)
        return d


# ---------------------------------------------------------------------------- molecules


def _rdkit_data_dir() -> Path:
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir)


@functools.lru_cache(maxsize=2)
def load_library_smiles(library: str) -> tuple[tuple[str, str], ...]:
    """Raw (id, SMILES) records of a bundled library, in file order (not yet parsed).

    Args:
        library: ``"lib_a"`` (RDKit ``Data/Pains/test_data/wehi_mols.csv``, ~10,000 molecules)
            or ``"lib_b"`` (RDKit ``Data/NCI/first_5K.smi``, ~5,000 molecules).

    Returns:
        Tuple of (source id, SMILES).

    Raises:
        FileNotFoundError: the RDKit wheel lacks the file.
    """
    root = _rdkit_data_dir()
    out: list[tuple[str, str]] = []
    if library == LIBRARY_A:
        import csv

        with open(root / "Pains" / "test_data" / "wehi_mols.csv", newline="") as fh:
            for row in csv.reader(fh):
                if len(row) >= 2 and row[0]:
                    out.append((row[1].strip(), row[0].strip()))
    elif library == LIBRARY_B:
        with open(root / "NCI" / "first_5K.smi") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2:
                    out.append((f"NCI-{int(parts[1]):05d}", parts[0]))
    else:
        raise ValueError(f"unknown library {library!r}")
    return tuple(out)


def _clean(smiles: str) -> tuple[str, Any] | None:
    """Largest fragment (most heavy atoms, first on ties), canonical SMILES; None if unusable
    (unparseable, < 6 or > 60 heavy atoms, or elements outside C N O S P F Cl Br I B Si Se)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    if len(frags) > 1:
        mol = max(frags, key=lambda m: m.GetNumHeavyAtoms())
    n = mol.GetNumHeavyAtoms()
    if n < 6 or n > 60 or mol.HasSubstructMatch(_inorganic()):
        return None
    can = Chem.MolToSmiles(mol)
    # re-parse so the molecule is exactly what a reader of the stored SMILES gets
    mol = Chem.MolFromSmiles(can)
    if mol is None:
        return None
    return can, mol


@functools.lru_cache(maxsize=1)
def _inorganic() -> Any:
    from rdkit import Chem

    return Chem.MolFromSmarts("[!#1;!#5;!#6;!#7;!#8;!#9;!#14;!#15;!#16;!#17;!#34;!#35;!#53]")


def _draw_molecules(
    library: str, n: int, rng: np.random.Generator, exclude: set[str], hidden: "_HiddenMap"
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Draw n usable molecules in a seeded order; returns (ids, SMILES, z, cliffs).

    Structure features are computed in blocks of 256 as molecules are accepted, so no more
    than one block of RDKit molecules is alive at a time.
    """
    from rdkit import RDLogger

    records = load_library_smiles(library)
    if n > len(records):
        raise ValueError(
            f"library {library} has only {len(records)} molecules (fewer usable), {n} requested "
            f"(lower n_molecules or change second_library_fraction)"
        )
    order = rng.permutation(len(records))
    ids: list[str] = []
    smiles: list[str] = []
    block: list[Any] = []
    zs: list[np.ndarray] = []
    cls: list[np.ndarray] = []

    def flush() -> None:
        if block:
            z, c = hidden.structure(block)
            zs.append(z)
            cls.append(c)
            block.clear()

    RDLogger.DisableLog("rdApp.*")
    try:
        for i in order:
            if len(ids) == n:
                break
            rid, smi = records[int(i)]
            res = _clean(smi)
            if res is None or res[0] in exclude:
                continue
            exclude.add(res[0])
            ids.append(rid)
            smiles.append(res[0])
            block.append(res[1])
            if len(block) == 256:
                flush()
        flush()
    finally:
        RDLogger.EnableLog("rdApp.*")
    if len(ids) < n:
        raise ValueError(
            f"library {library} has only {len(ids)} usable molecules, {n} requested "
            f"(lower n_molecules or change second_library_fraction)"
        )
    return ids, smiles, np.concatenate(zs), np.concatenate(cls)


# ---------------------------------------------------------------------------- hidden map


def _unit(v: np.ndarray, axis: int = -1) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), 1e-12)


def _fingerprints(mols: Sequence[Any]) -> np.ndarray:
    """Unit-normalised log1p Morgan counts (radius 2, 2048 bits), float64 [N, 2048]."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=_HiddenMap.FP_SIZE)
    x = np.stack([gen.GetCountFingerprintAsNumPy(m) for m in mols]).astype(np.float64)
    return _unit(np.log1p(x))


@functools.lru_cache(maxsize=1)
def _reference_fingerprint_mean() -> np.ndarray:
    """Mean fingerprint of a fixed reference set: the first 1000 usable molecules of library A
    and the first 500 of library B in file order (independent of seed and size)."""
    from rdkit import RDLogger

    mols = []
    RDLogger.DisableLog("rdApp.*")
    try:
        for lib, n in ((LIBRARY_A, 1000), (LIBRARY_B, 500)):
            got = 0
            for _rid, smi in load_library_smiles(lib):
                if got == n:
                    break
                res = _clean(smi)
                if res is not None:
                    mols.append(res[1])
                    got += 1
    finally:
        RDLogger.EnableLog("rdApp.*")
    total = np.zeros(_HiddenMap.FP_SIZE)
    for start in range(0, len(mols), 256):  # chunked: bounded temporaries
        total += _fingerprints(mols[start : start + 256]).sum(0)
    return total / len(mols)


class _HiddenMap:
    """Seeded structure -> (activity score, mechanism, potency, direction) map."""

    FP_SIZE = 2048

    def __init__(self, cfg: SimulatorConfig, seed: int):
        rng = np.random.default_rng([seed, 101])
        ds, dl, k = cfg.structure_dim, cfg.latent_dim, cfg.n_mechanisms
        self.cfg = cfg
        self.A = rng.standard_normal((self.FP_SIZE, ds))
        self.hidden_u = rng.standard_normal((32, ds)) * (1.5 / math.sqrt(ds))
        self.hidden_b = rng.standard_normal(32) * 0.5
        self.hidden_w = rng.standard_normal(32) / math.sqrt(32) * math.sqrt(2.0)
        self.cliff_w = rng.standard_normal(len(CLIFF_SMARTS)) * cfg.cliff_scale
        self.prototypes = _unit(rng.standard_normal((k, ds)))
        self.potency_u = _unit(rng.standard_normal(ds))
        a = cfg.effect_noise_alignment
        if not 0 <= a <= 1:
            raise ValueError(f"effect_noise_alignment must lie in [0, 1], got {a}")
        t = math.sqrt(a) * _noise_basis(cfg, seed) + math.sqrt(1 - a) * np.eye(dl) / math.sqrt(dl)
        self.mech_v1 = _unit(rng.standard_normal((k, dl)) @ t)
        self.mech_v2 = _unit(rng.standard_normal((k, dl)) @ t)
        self.mol_dir = rng.standard_normal((ds, dl)) / math.sqrt(ds) @ t

    def structure(self, mols: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """z [N, d_s] and cliff indicators [N, n_cliff]."""
        from rdkit import Chem

        pats = [Chem.MolFromSmarts(s) for s in CLIFF_SMARTS.values()]
        mu = _reference_fingerprint_mean()
        z = np.empty((len(mols), self.A.shape[1]))
        cliffs = np.zeros((len(mols), len(pats)))
        chunk = 256
        for start in range(0, len(mols), chunk):
            part = mols[start : start + chunk]
            # centering on a fixed reference mean removes the component every fingerprint
            # shares (unrelated molecules get uncorrelated z; similar ones stay close)
            z[start : start + len(part)] = (_fingerprints(part) - mu) @ self.A
            for i, m in enumerate(part):
                for j, p in enumerate(pats):
                    cliffs[start + i, j] = float(m.HasSubstructMatch(p))
        return z, cliffs

    def activity_score(self, z: np.ndarray, cliffs: np.ndarray) -> np.ndarray:
        smooth = np.tanh(z @ self.hidden_u.T + self.hidden_b) @ self.hidden_w
        return smooth + cliffs @ self.cliff_w

    def mechanism(self, z: np.ndarray) -> np.ndarray:
        return np.argmax(_unit(z) @ self.prototypes.T, axis=1)

    def log10_ec50(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        smooth = c.potency_structure_amplitude * np.tanh(z @ self.potency_u)
        noise = rng.standard_normal(len(z)) * c.potency_noise
        return np.clip(c.potency_log10_ec50_mean + smooth + noise, -1.5, 2.0)

    def directions(self, z: np.ndarray) -> np.ndarray:
        return _unit(z @ self.mol_dir)


def _effect_vectors(
    cfg: SimulatorConfig,
    hidden: _HiddenMap,
    mech: np.ndarray,
    mol_dir: np.ndarray,
    resp: np.ndarray,
    eff_norm: np.ndarray,
) -> np.ndarray:
    """Latent effect vectors [M, C, d]: norm ``eff_norm`` = A_m·r(c), direction
    normalize((1 - ω) v1_k + ω v2_k + η u_m) with ω = dose_shift·r² (turns with dose)."""
    omega = cfg.dose_shift * resp**2  # [M, C]
    v1 = hidden.mech_v1[mech]  # [M, d]
    v2 = hidden.mech_v2[mech]
    direction = _unit(
        (1 - omega)[:, :, None] * v1[:, None, :]
        + omega[:, :, None] * v2[:, None, :]
        + cfg.molecule_direction_weight * mol_dir[:, None, :]
    )
    return eff_norm[:, :, None] * direction


class _Encoder:
    """The fixed random nonlinear 'pretrained encoder' latent -> E."""

    def __init__(self, cfg: SimulatorConfig):
        rng = np.random.default_rng([cfg.encoder_seed, 7])
        d, h, e = cfg.latent_dim, cfg.encoder_hidden, cfg.embedding_dim
        # float32 weights: the encoder is the hot loop (n_wells x (d·h + h·E) MACs)
        self.W1 = (rng.standard_normal((d, h)) * (cfg.encoder_gain / math.sqrt(d))).astype(np.float32)
        self.b1 = (rng.standard_normal(h) * 0.5).astype(np.float32)
        self.W2 = (rng.standard_normal((h, e)) / math.sqrt(h)).astype(np.float32)
        self.b2 = (rng.standard_normal(e) * 0.1).astype(np.float32)
        self.y0 = _unit(rng.standard_normal(d)) * cfg.baseline_norm

    def __call__(self, y: np.ndarray) -> np.ndarray:
        a = np.asarray(y, dtype=np.float32) @ self.W1
        a += self.b1
        # tanh-approximation of GELU, in place: g = 0.5·a·(1 + tanh(√(2/π)·(a + 0.044715·a³)))
        t = a * a
        t *= 0.044715
        t += 1.0
        t *= a
        t *= np.float32(0.7978845608028654)
        np.tanh(t, out=t)
        t += 1.0
        t *= a
        t *= 0.5
        out = t @ self.W2
        out += self.b2
        return out


def _noise_basis(cfg: SimulatorConfig, seed: int) -> np.ndarray:
    """Matrix L [d, d] with rows scaled so that eps = g @ L has E||eps||^2 = 1."""
    rng = np.random.default_rng([seed, 202])
    d = cfg.latent_dim
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = np.exp(-np.arange(d) / cfg.noise_decay)
    s = s / np.sqrt((s**2).sum())
    return s[:, None] * q.T


# ---------------------------------------------------------------------------- layout


_ROWS = "ABCDEFGHIJKLMNOP"


def _address(pos: np.ndarray) -> list[str]:
    return [f"{_ROWS[p // 24]}{p % 24 + 1:02d}" for p in pos]


@dataclass
class _Library:
    name: str
    molecule_ids: list[str]
    smiles: list[str]
    sample_mol: np.ndarray  # [S] molecule index
    sample_conc: np.ndarray  # [S] concentration index
    sample_reps: np.ndarray  # [S]
    n_batches: int
    well_sample: list[np.ndarray] = field(default_factory=list)  # per batch, -1 = control
    # per batch, the slot of each well (plate * 384 + address); None: wells fill plates in order
    well_slot: list[np.ndarray] | None = None


def _layout(lib: _Library, cfg: SimulatorConfig, rng: np.random.Generator) -> None:
    """The random plate map: each batch's wells (its samples' replicates plus controls) are
    shuffled and fill its plates in address order."""
    n_b = lib.n_batches
    per_batch = _batch_members(lib, cfg, rng)
    q = cfg.control_fraction / (1 - cfg.control_fraction)
    for b in range(n_b):
        treated = np.asarray(sorted(per_batch[b]), dtype=np.int64)
        n_ctrl = max(cfg.min_controls_per_batch, int(round(q * len(treated))))
        wells = np.concatenate([treated, -np.ones(n_ctrl, dtype=np.int64)])
        lib.well_sample.append(wells[rng.permutation(len(wells))])


def _batch_members(lib: _Library, cfg: SimulatorConfig, rng: np.random.Generator) -> list[list[int]]:
    """Which samples have a replicate well in each batch (replicates in distinct batches)."""
    s = len(lib.sample_mol)
    n_b = lib.n_batches
    keys = rng.random((s, n_b))
    order = np.argsort(keys, axis=1)[:, : cfg.max_replicates]
    per_batch: list[list[int]] = [[] for _ in range(n_b)]
    for r in range(cfg.max_replicates):
        use = lib.sample_reps > r
        for b in range(n_b):
            sel = np.flatnonzero(use & (order[:, r] == b))
            per_batch[b].extend(sel.tolist())
    return per_batch


def _layout_shared(lib: _Library, cfg: SimulatorConfig, rng: np.random.Generator) -> None:
    """One plate map for the library: fixed control addresses on every plate; each sample gets
    a home address, chosen greedily (samples in random order) to balance the load of every
    batch it appears in, and its replicate wells take that address on one plate of each of its
    batches. A well that finds every plate's home slot taken (rare) goes to a free
    sample slot of its batch."""
    per_batch = _batch_members(lib, cfg, rng)
    size = cfg.plate_size
    n_ctrl = max(1, int(round(size * cfg.control_fraction)))
    perm = rng.permutation(size)
    ctrl_addr = np.sort(perm[:n_ctrl])
    sample_addr = np.sort(perm[n_ctrl:])
    n_sa = len(sample_addr)
    n_b = lib.n_batches
    # at least min_controls_per_batch control wells per batch
    plates = np.array([max(math.ceil(len(m) / n_sa), math.ceil(cfg.min_controls_per_batch / n_ctrl), 1)
                       for m in per_batch])
    batches_of: list[list[int]] = [[] for _ in range(len(lib.sample_mol))]
    for b, members in enumerate(per_batch):
        for smp in members:
            batches_of[smp].append(b)
    load = np.zeros((n_b, n_sa))
    home = np.empty(len(lib.sample_mol), dtype=np.int64)
    for smp in rng.permutation(len(lib.sample_mol)):
        bs = batches_of[smp]
        worst = (load[bs] / plates[bs, None]).max(0)
        best = np.flatnonzero(worst == worst.min())
        a = best[int(rng.integers(len(best)))]
        home[smp] = a
        load[bs, a] += 1
    lib.well_slot = []
    for b, members in enumerate(per_batch):
        p = int(plates[b])
        members = np.asarray(members, dtype=np.int64)
        members = members[rng.permutation(len(members))]
        taken = np.zeros((p, n_sa), bool)
        slot = np.full(len(members), -1, dtype=np.int64)
        for i, smp in enumerate(members):
            free = np.flatnonzero(~taken[:, home[smp]])
            if free.size:
                taken[free[0], home[smp]] = True
                slot[i] = free[0] * n_sa + home[smp]
        spill = np.flatnonzero(slot < 0)
        if spill.size:
            open_slots = np.flatnonzero(~taken.reshape(-1))
            slot[spill] = rng.choice(open_slots, size=spill.size, replace=False)
        # slot index over sample addresses -> plate * size + address
        plate_of, a_idx = np.divmod(slot, n_sa)
        treated_slot = plate_of * size + sample_addr[a_idx]
        ctrl_slot = (np.arange(p)[:, None] * size + ctrl_addr[None, :]).reshape(-1)
        wells = np.concatenate([members, -np.ones(len(ctrl_slot), dtype=np.int64)])
        slots = np.concatenate([treated_slot, ctrl_slot])
        order = np.argsort(slots, kind="stable")
        lib.well_sample.append(wells[order])
        lib.well_slot.append(slots[order])


class _PositionEffect:
    """Latent well-position shifts: row + column + address terms, drawn from the well-noise
    distribution (they lie along typical variation, like the effects), shared by the plates
    of a library with a per-batch redrawn part."""

    def __init__(self, cfg: SimulatorConfig, seed: int, library: int, noise_L: np.ndarray):
        self.cfg, self.seed, self.library, self.L = cfg, seed, library, noise_L
        self.shared = self._draw(np.random.default_rng([seed, 8, library]))

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        cfg, d = self.cfg, self.cfg.latent_dim
        rows = rng.standard_normal((16, d)) @ self.L
        cols = rng.standard_normal((24, d)) @ self.L
        addr = rng.standard_normal((cfg.plate_size, d)) @ self.L
        a = np.arange(cfg.plate_size)
        w_rc = math.sqrt((1 - cfg.position_address_share) / 2)
        return cfg.position_scale * (w_rc * rows[a // 24] + w_rc * cols[a % 24]
                                     + math.sqrt(cfg.position_address_share) * addr)

    def batch(self, b: int) -> np.ndarray:
        """[plate_size, d] position shifts of batch b."""
        beta = self.cfg.position_batch_share
        own = self._draw(np.random.default_rng([self.seed, 9, self.library, b]))
        return math.sqrt(1 - beta) * self.shared + math.sqrt(beta) * own


# ---------------------------------------------------------------------------- main entry


def _seq_rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([seed, *tags])


def simulate(
    out: str | os.PathLike | None = None,
    *,
    n_molecules: int | None = None,
    seed: int = 0,
    config: SimulatorConfig | None = None,
    call_activity: bool = True,
    return_dataset: bool = True,
    progress: bool | None = None,
    overwrite: bool = False,
    **overrides: Any,
):
    """Simulate a phenomolecular screen and write it as a dataset directory.

    Args:
        out: Output directory; ``None`` writes to a temporary directory that lives as long as
            the returned dataset's process (use for quick experiments and tests).
        n_molecules: Shortcut for ``config.n_molecules``.
        seed: Seed of everything except the fixed encoder. Same seed and parameters ->
            byte-identical Parquet files.
        config: Full parameter set (defaults: :class:`SimulatorConfig`).
        call_activity: Also compute activity p-values (:func:`molphenix.data.call_activity`)
            and write ``calls.parquet``.
        return_dataset: Load and return the written dataset (set False for huge runs).
        progress: tqdm progress bar; default: only when stderr is a TTY.
        overwrite: Replace an existing dataset in ``out``.
        **overrides: Individual :class:`SimulatorConfig` fields.

    Returns:
        The :class:`molphenix.data.Dataset` (or the output ``Path`` when
        ``return_dataset=False``).

    Raises:
        ValueError: invalid parameters, or more molecules requested than the bundled libraries
            hold (10,000 usable in library A, ~4,600 in library B).
        FileExistsError: ``out`` already holds a dataset and ``overwrite`` is False.
    """
    from tqdm.auto import tqdm

    cfg = config or SimulatorConfig()
    if n_molecules is not None:
        overrides["n_molecules"] = n_molecules
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="molphenix-sim-"))
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if (root / "wells.parquet").exists() and not overwrite:
        raise FileExistsError(f"{root / 'wells.parquet'} exists (pass overwrite=True)")
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()

    # ---- molecules
    n_b_mol = int(round(cfg.n_molecules * cfg.second_library_fraction))
    n_a_mol = cfg.n_molecules - n_b_mol
    seen: set[str] = set()
    libs_raw = []
    hidden = _HiddenMap(cfg, seed)
    zs, cls = [], []
    for li, (name, n) in enumerate(((LIBRARY_A, n_a_mol), (LIBRARY_B, n_b_mol))):
        if n == 0:
            continue
        ids, smi, z_l, c_l = _draw_molecules(name, n, _seq_rng(seed, 1, li), seen, hidden)
        libs_raw.append((name, ids, smi, None))
        zs.append(z_l)
        cls.append(c_l)
    z, cliffs = np.concatenate(zs), np.concatenate(cls)
    score = hidden.activity_score(z, cliffs)
    thresh = np.quantile(score, 1 - cfg.active_fraction)
    is_active_mol = score >= thresh
    mech = hidden.mechanism(z)
    rng_mol = _seq_rng(seed, 2)
    log_ec50 = hidden.log10_ec50(z, rng_mol)
    hill = np.clip(np.exp(np.log(cfg.hill_median) + cfg.hill_spread * rng_mol.standard_normal(len(z))), 0.5, 4.0)
    amp = cfg.effect_scale * np.exp(cfg.effect_spread * rng_mol.standard_normal(len(z)))
    amp = np.where(is_active_mol, amp, 0.0)
    if cfg.inactive_effect_scale > 0:
        # weak phenotypes of the inactive molecules, from their own stream: every other draw
        # (and so every control well and every active molecule's wells) is unchanged
        weak = cfg.inactive_effect_scale * np.exp(cfg.effect_spread * _seq_rng(seed, 6).standard_normal(len(z)))
        amp = np.where(is_active_mol, amp, weak)
    mol_dir = hidden.directions(z)

    concs = np.asarray(cfg.concentrations_um, dtype=np.float64)
    ec50 = 10.0**log_ec50
    # response [M, C]
    resp = concs[None, :] ** hill[:, None] / (concs[None, :] ** hill[:, None] + ec50[:, None] ** hill[:, None])
    eff_norm = amp[:, None] * resp
    effects = _effect_vectors(cfg, hidden, mech, mol_dir, resp, eff_norm)  # [M, C, d]
    truth_active = is_active_mol[:, None] & (eff_norm >= cfg.active_effect_threshold)

    # ---- layout
    libraries: list[_Library] = []
    offset = 0
    for li, (name, ids, smi, _mols) in enumerate(libs_raw):
        m = len(ids)
        rng_l = _seq_rng(seed, 3, li)
        sm = np.repeat(np.arange(offset, offset + m), len(concs))
        sc = np.tile(np.arange(len(concs)), m)
        reps = rng_l.integers(cfg.min_replicates, cfg.max_replicates + 1, size=len(sm))
        n_batches = max(cfg.max_replicates, math.ceil(int(reps.sum()) / cfg.treated_wells_per_batch))
        lib = _Library(name, ids, smi, sm, sc, reps, n_batches)
        if cfg.plate_map == "shared":
            _layout_shared(lib, cfg, rng_l)
        else:
            _layout(lib, cfg, rng_l)
        libraries.append(lib)
        offset += m

    encoder = _Encoder(cfg)
    noise_L = _noise_basis(cfg, seed)
    positions = [
        _PositionEffect(cfg, seed, li, noise_L) if cfg.position_scale > 0 else None for li in range(len(libraries))
    ]
    d = cfg.latent_dim
    e_dim = cfg.embedding_dim
    f0 = encoder(encoder.y0[None, :])[0]
    # embedding-space noise scale measured once from the encoder (design-time constant)
    cal_rng = np.random.default_rng([cfg.encoder_seed, 99])
    cal = encoder(encoder.y0 + cal_rng.standard_normal((512, d)) @ noise_L) - f0
    noise_dim_sd = float(np.sqrt((cal**2).mean()))
    embed_noise_norm = float(np.sqrt((cal**2).sum(1).mean()))

    schema = wells_schema(e_dim)
    writer = pq.ParquetWriter(
        root / "wells.parquet.tmp", schema, compression="zstd", compression_level=1,
        use_dictionary=["well_id", "dataset", "batch", "plate", "molecule_id"],
    )
    batch_effect_norms = []
    n_wells_total = 0
    n_controls_total = 0
    total_batches = sum(l.n_batches for l in libraries)
    mol_ids_all = [mid for l in libraries for mid in l.molecule_ids]
    bar = tqdm(total=total_batches, desc="simulate", unit="batch", disable=not progress)
    try:
        for li, lib in enumerate(libraries):
            rng_lib = _seq_rng(seed, 4, li)
            lib_shift = (
                _unit(rng_lib.standard_normal(d)) * cfg.library_shift_scale if li > 0 else np.zeros(d)
            )
            for b, wells in enumerate(lib.well_sample):
                rng_b = _seq_rng(seed, 5, li, b)
                batch_name = f"{lib.name}-b{b + 1:03d}"
                n_w = len(wells)
                slots = lib.well_slot[b] if lib.well_slot is not None else np.arange(n_w)
                n_plates = int(slots.max()) // cfg.plate_size + 1
                beta = _unit(rng_b.standard_normal(d)) * cfg.batch_scale
                plate_shift = _unit(rng_b.standard_normal((n_plates, d))) * cfg.plate_scale
                gain = 1.0 + cfg.batch_gain_sd * rng_b.standard_normal()
                offset_e = _unit(rng_b.standard_normal(e_dim)) * cfg.batch_offset_scale * embed_noise_norm
                plate_idx, pos = np.divmod(slots, cfg.plate_size)
                treated = wells >= 0
                s_idx = np.where(treated, wells, 0)
                mol_idx = lib.sample_mol[s_idx]
                conc_idx = lib.sample_conc[s_idx]
                eff = np.where(treated[:, None], effects[mol_idx, conc_idx], 0.0)
                eps = rng_b.standard_normal((n_w, d)) @ noise_L
                y = encoder.y0 + lib_shift + beta + plate_shift[plate_idx] + eff + eps
                if positions[li] is not None:
                    y += positions[li].batch(b)[pos]
                x = encoder(y)
                x *= np.float32(gain)
                x += offset_e.astype(np.float32)
                noise = rng_b.standard_normal((n_w, e_dim), dtype=np.float32)
                noise *= np.float32(cfg.measurement_noise * noise_dim_sd)
                x += noise
                batch_effect_norms.append(
                    float(np.linalg.norm(gain * encoder((encoder.y0 + lib_shift + beta)[None])[0] + offset_e - f0))
                )
                plates = [f"{batch_name}-p{p + 1}" for p in range(n_plates)]
                plate_col = [plates[p] for p in plate_idx]
                addr = _address(pos)
                well_ids = [f"{pl}-{a}" for pl, a in zip(plate_col, addr)]
                mol_col = [mol_ids_all[m] if t else None for m, t in zip(mol_idx, treated)]
                conc_col = np.where(treated, concs[conc_idx], np.nan)
                flat = pa.array(x.reshape(-1))
                tbl = pa.table(
                    {
                        "well_id": pa.array(well_ids, pa.string()),
                        "dataset": pa.array([lib.name] * n_w, pa.string()),
                        "batch": pa.array([batch_name] * n_w, pa.string()),
                        "plate": pa.array(plate_col, pa.string()),
                        "molecule_id": pa.array(mol_col, pa.string()),
                        "concentration_um": pa.array(conc_col, pa.float64(), mask=~treated),
                        "is_control": pa.array(~treated),
                        "phenomic": pa.FixedSizeListArray.from_arrays(flat, e_dim),
                    },
                    schema=schema,
                )
                writer.write_table(tbl)
                n_wells_total += n_w
                n_controls_total += int((~treated).sum())
                bar.update(1)
    finally:
        writer.close()
        bar.close()
    os.replace(root / "wells.parquet.tmp", root / "wells.parquet")

    # ---- molecules and truth tables
    mol_ids = [mid for l in libraries for mid in l.molecule_ids]
    mol_smiles = [s for l in libraries for s in l.smiles]
    mol_lib = [l.name for l in libraries for _ in l.molecule_ids]
    molecules = pa.table(
        {
            "molecule_id": pa.array(mol_ids, pa.string()),
            "smiles": pa.array(mol_smiles, pa.string()),
            "library": pa.array(mol_lib, pa.string()),
        }
    )
    m_n, c_n = len(mol_ids), len(concs)
    mech_names = np.array([f"M{k:02d}" for k in range(cfg.n_mechanisms)], dtype=object)
    mech_col = np.where(is_active_mol, mech_names[mech], "none")
    truth = pa.table(
        {
            "molecule_id": pa.array(np.repeat(np.array(mol_ids, dtype=object), c_n), pa.string()),
            "concentration_um": pa.array(np.tile(concs, m_n), pa.float64()),
            "active": pa.array(truth_active.reshape(-1)),
            "potency": pa.array(np.repeat(6.0 - log_ec50, c_n), pa.float64()),
            "mechanism": pa.array(np.repeat(mech_col, c_n).tolist(), pa.string()),
            "ec50_um": pa.array(np.repeat(ec50, c_n), pa.float64()),
            "hill": pa.array(np.repeat(hill, c_n), pa.float64()),
            "response": pa.array(resp.reshape(-1), pa.float64()),
            "effect_norm": pa.array(eff_norm.reshape(-1), pa.float64()),
            "activity_score": pa.array(np.repeat(score, c_n), pa.float64()),
            "dataset": pa.array(np.repeat(np.array(mol_lib, dtype=object), c_n), pa.string()),
        }
    )
    from .io import write_table

    write_table(molecules, root / "molecules.parquet")
    write_table(truth, root / "truth.parquet")

    # ---- measured effect / noise / batch ratios in embedding space
    top = c_n - 1
    act_top = np.flatnonzero(truth_active[:, top])
    if act_top.size:
        sel = act_top[:256]
        eff_embed = np.linalg.norm(encoder(encoder.y0 + effects[sel, top]) - f0, axis=1)
        median_effect = float(np.median(eff_embed))
    else:
        median_effect = float("nan")
    batch_rms = float(np.sqrt(np.mean(np.square(batch_effect_norms))))
    inact_top = np.flatnonzero(~is_active_mol)
    if cfg.inactive_effect_scale > 0 and inact_top.size:
        sel = inact_top[:256]
        weak_embed = np.linalg.norm(encoder(encoder.y0 + effects[sel, top]) - f0, axis=1)
        median_weak = float(np.median(weak_embed))
    else:
        median_weak = 0.0
    measured = {
        "well_noise_norm_embedding": embed_noise_norm
        * math.sqrt(1 + cfg.measurement_noise**2),
        "median_top_dose_active_effect_norm_embedding": median_effect,
        "rms_batch_effect_norm_embedding": batch_rms,
        "effect_to_noise_ratio": median_effect / (embed_noise_norm * math.sqrt(1 + cfg.measurement_noise**2)),
        "batch_to_effect_ratio": batch_rms / median_effect if median_effect > 0 else float("nan"),
        "inactive_effect_to_noise_ratio": median_weak
        / (embed_noise_norm * math.sqrt(1 + cfg.measurement_noise**2)),
        "active_fraction_top_dose": float(truth_active[:, top].mean()),
        "active_fraction_by_dose": {str(c): float(truth_active[:, i].mean()) for i, c in enumerate(concs)},
    }
    from rdkit import __version__ as rdkit_version

    meta = {
        "name": "molphenix-simulated",
        "simulator_version": SIMULATOR_VERSION,
        "seed": seed,
        "config": cfg.to_dict(),
        "embedding_dim": e_dim,
        "cliff_smarts": CLIFF_SMARTS,
        "sources": {
            LIBRARY_A: "rdkit/Data/Pains/test_data/wehi_mols.csv",
            LIBRARY_B: "rdkit/Data/NCI/first_5K.smi",
            "rdkit_version": rdkit_version,
        },
        "datasets": [l.name for l in libraries],
        "primary_dataset": LIBRARY_A,
        "counts": {
            "molecules": m_n,
            "wells": n_wells_total,
            "control_wells": n_controls_total,
            "batches": total_batches,
        },
        "measured": measured,
    }
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / "meta.json")

    if call_activity:
        from .activity import call_activity as _call
        from .io import load_dataset, save_calls

        ds = load_dataset(root, check_smiles=False)
        calls = _call(ds)
        save_calls(calls, root)
        md = calls.schema.metadata or {}
        meta["activity_calling"] = json.loads(md.get(b"molphenix", b"{}"))
        from .activity import evaluate_calls

        ev = evaluate_calls(calls, ds.truth)
        meta["activity_calling"]["evaluation"] = {
            "roc_auc": ev["roc_auc"],
            "tpr": ev["tpr"],
            "fpr": ev["fpr"],
            "auc_by_concentration": {str(k): v for k, v in ev["auc_by_concentration"].items()},
        }
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, root / "meta.json")
        ds.meta = meta
        if not return_dataset:
            return root
        return ds.with_calls(calls)
    if not return_dataset:
        return root
    from .io import load_dataset

    return load_dataset(root, check_smiles=False)


def summary(root: str | os.PathLike, elapsed: float | None = None) -> str:
    """One-line summary of a simulated dataset directory (counts, ratios, activity AUC).

    Args:
        root: Dataset directory written by :func:`simulate`.
        elapsed: Seconds taken, if known.

    Returns:
        The summary line.
    """
    meta = json.loads((Path(root) / "meta.json").read_text())
    c, m = meta["counts"], meta["measured"]
    line = (
        f"wrote {root}: {c['wells']} wells ({c['control_wells']} controls), {c['molecules']} molecules, "
        f"{c['batches']} batches"
        + (f" in {elapsed:.1f} s" if elapsed is not None else "")
        + f"; effect/noise {m['effect_to_noise_ratio']:.2f}, batch/effect {m['batch_to_effect_ratio']:.2f}, "
        f"active at top dose {m['active_fraction_top_dose']:.1%}"
    )
    ev = meta.get("activity_calling", {}).get("evaluation")
    if ev:
        line += f"; activity p-value ROC AUC vs truth {ev['roc_auc']:.3f}"
    return line

