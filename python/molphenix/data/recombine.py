"""A deterministic screening library of any size, recombined from SMILES that ship with RDKit.

No library of a million real molecules ships with RDKit or molphenix, so benchmarks and tests make
one: the ~15,000 molecules bundled with RDKit (the WEHI PAINS test set and the first 5,000 NCI
structures, :func:`molphenix.data.simulator.load_library_smiles`) are cut into BRICS fragments
(RDKit ``BRICS.BRICSDecompose``), and new molecules are built by attaching, to a fragment with one
to three BRICS attachment points (the core), one single-attachment fragment (a cap) per point,
chosen among the caps whose BRICS environment may bond to that point's (RDKit's
``BRICS.reactionDefs``, single bonds). Each product is sanitised, kept when it has 12 to 50 heavy
atoms, written as canonical SMILES and kept only if its InChIKey is new. (That every written
SMILES parses again is checked by the tests on small libraries and, for the benchmark libraries,
by ``embed-library``'s reject count.)

Determinism: products are drawn in blocks; block ``b`` uses ``numpy.random.default_rng([seed,
b])`` and blocks are consumed in order, so the output depends only on ``seed``, ``n`` and the
RDKit version (not on the number of worker processes). The first ``n`` molecules of a larger
request are the ``n``-molecule library (a prefix).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["brics_fragments", "recombined_molecules", "GENERATOR_VERSION"]

#: Changes whenever the output for a given seed and RDKit version changes.
GENERATOR_VERSION = 1
_BLOCK = 512
_MIN_HEAVY, _MAX_HEAVY = 12, 50


def brics_fragments(smiles: Sequence[str], *, max_heavy: int = 30) -> List[str]:
    """Sorted unique BRICS fragments (with ``[n*]`` attachment points) of the molecules.

    Every BRICS bond of a molecule is broken at once (RDKit ``BRICS.BreakBRICSBonds``) and the
    pieces are kept: the leaves of ``BRICS.BRICSDecompose``, at a fraction of its cost.

    Args:
        smiles: source SMILES (unparsable ones are skipped).
        max_heavy: keep fragments with at most this many heavy atoms (attachment points aside).

    Returns:
        Canonical fragment SMILES with 1 to 3 attachment points, sorted.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import BRICS

    RDLogger.DisableLog("rdApp.*")
    out = set()
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is None:
            continue
        try:
            pieces = Chem.GetMolFrags(BRICS.BreakBRICSBonds(m), asMols=True, sanitizeFrags=False)
        except Exception:  # noqa: BLE001 - RDKit raises assorted errors on odd structures
            continue
        for f in pieces:
            dummies = sum(1 for a in f.GetAtoms() if a.GetAtomicNum() == 0)
            heavy = f.GetNumHeavyAtoms() - dummies
            if not (1 <= dummies <= 3 and 1 <= heavy <= max_heavy):
                continue
            try:
                Chem.SanitizeMol(f)
            except Exception:  # noqa: BLE001
                continue
            out.add(Chem.MolToSmiles(f))
    return sorted(out)


def _compatibility() -> Dict[str, List[str]]:
    from rdkit.Chem import BRICS

    compat: Dict[str, set] = {}
    for group in BRICS.reactionDefs:
        for a, b, bond in group:
            if bond != "-":
                continue
            compat.setdefault(a, set()).add(b)
            compat.setdefault(b, set()).add(a)
    return {k: sorted(v, key=int) for k, v in compat.items()}


class _Builder:
    """Fragments parsed once per process; :meth:`block` draws one block of products."""

    def __init__(self, fragments: Sequence[str]) -> None:
        from rdkit import Chem

        frags = [Chem.MolFromSmiles(f) for f in fragments]
        dummies = [[a.GetIdx() for a in m.GetAtoms() if a.GetAtomicNum() == 0] for m in frags]
        labels = [[str(m.GetAtomWithIdx(i).GetIsotope()) for i in d] for m, d in zip(frags, dummies)]
        compat = _compatibility()
        caps_by_label: Dict[str, List[int]] = {}
        for i, ls in enumerate(labels):
            if len(ls) == 1:
                caps_by_label.setdefault(ls[0], []).append(i)
        # caps that may bond to a point of environment L
        self.caps = {L: np.asarray(sorted(j for M in compat.get(L, ()) for j in caps_by_label.get(M, ())),
                                   dtype=np.int64) for L in compat}
        self.cores = np.asarray([i for i, ls in enumerate(labels)
                                 if ls and all(self.caps.get(L, np.zeros(0)).size for L in ls)],
                                dtype=np.int64)
        self.labels = labels

        def mapped(m: Any, idx: Sequence[int], maps: Sequence[int]) -> Any:
            rw = Chem.RWMol(m)
            for i, k in zip(idx, maps):
                rw.GetAtomWithIdx(i).SetAtomMapNum(k)
            return rw.GetMol()

        # every core with its points numbered 1..m; every cap once per point number (1..3)
        self.core_mols = {int(i): mapped(frags[i], dummies[i], range(1, len(dummies[i]) + 1))
                          for i in self.cores}
        cap_ids = sorted({int(j) for v in self.caps.values() for j in v})
        self.cap_mols = {j: [mapped(frags[j], dummies[j], [k]) for k in (1, 2, 3)] for j in cap_ids}

    def product(self, core: int, caps: Sequence[int]) -> Optional[Tuple[str, str]]:
        from rdkit import Chem

        combo = self.core_mols[core]
        for k, c in enumerate(caps):
            combo = Chem.CombineMols(combo, self.cap_mols[c][k])
        try:
            m = Chem.molzip(combo)
            Chem.SanitizeMol(m)
            heavy = m.GetNumHeavyAtoms()
            if not _MIN_HEAVY <= heavy <= _MAX_HEAVY:
                return None
            smi = Chem.MolToSmiles(m)
            key = Chem.MolToInchiKey(m)
        except Exception:  # noqa: BLE001 - an invalid combination is skipped, never fatal
            return None
        if not key:
            return None
        return smi, key

    def block(self, seed: int, b: int) -> List[Tuple[str, str]]:
        rng = np.random.default_rng([seed, b])
        out = []
        for _ in range(_BLOCK):
            core = int(self.cores[rng.integers(self.cores.size)])
            caps = []
            for L in self.labels[core]:
                pool = self.caps[L]
                caps.append(int(pool[rng.integers(pool.size)]))
            got = self.product(core, caps)
            if got is not None:
                out.append(got)
        return out


_W: Dict[str, Any] = {}


def _init(fragments: Sequence[str]) -> None:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    _W["b"] = _Builder(fragments)


def _block(args: Tuple[int, int]) -> List[Tuple[str, str]]:
    return _W["b"].block(*args)


def recombined_molecules(n: int, seed: int = 0, *, workers: int = 1,
                         sources: Sequence[str] = ("lib_a", "lib_b"),
                         source_limit: Optional[int] = None) -> Iterator[Tuple[str, str, str]]:
    """The first ``n`` molecules of the recombined library of ``seed``: ``(id, smiles,
    inchikey)``, ids ``RC<seed>-<8-digit index>``; distinct InChIKeys, valid canonical SMILES.

    Args:
        n: number of molecules (>= 1).
        seed: the library's seed.
        workers: processes drawing blocks (the output does not depend on it).
        sources: bundled source libraries (:func:`molphenix.data.simulator.load_library_smiles`).
        source_limit: use only the first this many molecules of each source (small, fast
            libraries for tests; a different library than the full one).

    Raises:
        ValueError: n < 1; the fragments cannot make enough distinct molecules.
    """
    from rdkit import RDLogger

    from molphenix.data.simulator import load_library_smiles

    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    RDLogger.DisableLog("rdApp.*")
    smiles = [s for lib in sources for _, s in load_library_smiles(lib)[:source_limit]]
    fragments = brics_fragments(smiles)
    seen: set = set()
    made = 0
    width = 8  # fixed: the ids of a prefix do not depend on n

    def emit(block: List[Tuple[str, str]]) -> Iterator[Tuple[str, str, str]]:
        nonlocal made
        for smi, key in block:
            if key in seen:
                continue
            seen.add(key)
            yield f"RC{seed}-{made:0{width}d}", smi, key
            made += 1
            if made >= n:
                return

    b, empty = 0, 0
    if workers <= 1:
        _init(fragments)
        while made < n:
            before = made
            yield from emit(_block((seed, b)))
            b += 1
            empty = empty + 1 if made == before else 0
            if empty > 50:
                raise ValueError(f"n: the fragments made only {made} distinct molecules")
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(fragments,)) as pool:
        ahead = 4 * workers
        pending = [pool.apply_async(_block, ((seed, i),)) for i in range(ahead)]
        b = ahead
        while made < n:
            before = made
            yield from emit(pending.pop(0).get())
            pending.append(pool.apply_async(_block, ((seed, b),)))
            b += 1
            empty = empty + 1 if made == before else 0
            if empty > 50:
                raise ValueError(f"n: the fragments made only {made} distinct molecules")
        pool.terminate()


def default_workers() -> int:
    """Processes to use by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
