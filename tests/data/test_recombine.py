"""The recombined screening library: deterministic, valid, distinct by InChIKey, prefix-stable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rdkit import Chem

from molphenix.data.recombine import recombined_molecules

ROOT = Path(__file__).resolve().parents[2]


def test_deterministic_valid_distinct_and_prefix_stable():
    a = list(recombined_molecules(120, seed=3, source_limit=60))
    b = list(recombined_molecules(80, seed=3, source_limit=60, workers=2))
    assert len(a) == 120 and a[:80] == b  # same seed: same molecules, whatever the workers / n
    assert [m[0] for m in a[:2]] == ["RC3-00000000", "RC3-00000001"]
    keys = [k for _, _, k in a]
    assert len(set(keys)) == 120 and len({s for _, s, _ in a}) == 120
    for _, smi, key in a:
        m = Chem.MolFromSmiles(smi)
        assert m is not None and Chem.MolToSmiles(m) == smi  # valid and canonical
        assert 12 <= m.GetNumHeavyAtoms() <= 50
    other = list(recombined_molecules(50, seed=4, source_limit=60))
    assert [s for _, s, _ in other] != [s for _, s, _ in a[:50]]


def test_script_writes_the_file_and_its_checksum(tmp_path):
    import hashlib
    import json

    from rdkit import __version__ as rdkit_version

    want = [f"{s}\t{i}" for i, s, _ in recombined_molecules(30, seed=1, source_limit=60)]
    sha = hashlib.sha256(("\n".join(want) + "\n").encode()).hexdigest()
    record = tmp_path / "recorded.json"
    record.write_text(json.dumps({"n": 30, "seed": 1, "rdkit": rdkit_version, "sha256_text": sha}))
    out = tmp_path / "lib.smi"
    cmd = [sys.executable, str(ROOT / "scripts" / "make_screening_library.py"), "--n", "30",
           "--seed", "1", "--out", str(out), "--workers", "1", "--source-limit", "60",
           "--check", str(record)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0 and "check ok" in run.stdout, run.stderr
    assert out.read_text().splitlines() == want
    assert json.loads((tmp_path / "lib.smi.json").read_text())["sha256_text"] == sha
