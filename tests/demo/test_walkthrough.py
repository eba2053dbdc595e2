"""docs/walkthrough.md, run as written on the RxRx3-core loader fixture (tiny training budget).

Every ```python block is executed in one namespace and every ``molphenix ...`` line of a ```bash
block goes through ``main([...])``, in order, in a temporary directory holding the fixture files
under the names the walkthrough uses. Only the training budget is changed (appended flags).
"""

from __future__ import annotations

import re
import shlex
import shutil
import warnings
from pathlib import Path

import pyarrow.csv as pcsv

from molphenix.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "walkthrough.md"
FIXTURE = ROOT / "tests" / "fixtures" / "rxrx3_core"
TINY_TRAIN = ["--samples", "16", "--batch-size", "4", "--no-progress"]


def _blocks(text: str):
    for m in re.finditer(r"```(python|bash)\n(.*?)```", text, re.S):
        yield m.group(1), m.group(2)


def test_walkthrough_runs_on_the_fixture(tmp_path, monkeypatch):
    src = FIXTURE
    (tmp_path / "rxrx3-core").mkdir()
    for f in ("metadata_rxrx3_core.csv", "OpenPhenom_rxrx3_core_embeddings.parquet"):
        shutil.copy(src / f, tmp_path / "rxrx3-core" / f)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    ran = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader warns about the fixture's skipped rows
        for kind, code in _blocks(DOC.read_text()):
            if kind == "python":
                exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - our own documentation
                ran.append("python")
                continue
            for line in code.splitlines():
                if not line.startswith("molphenix "):
                    continue
                argv = shlex.split(line)[1:]
                if argv[0] == "train":
                    argv += TINY_TRAIN
                assert main(argv) == 0, line
                ran.append(argv[0])
    assert ran.count("python") == 3
    assert ran[1:] == ["train", "evaluate", "python", "embed-library", "retrieve", "python"][: len(ran) - 1]
    assert (tmp_path / "rxrx3-run" / "metrics.json").is_file()
    hits = pcsv.read_csv(tmp_path / "hits.csv")
    assert hits.column_names[:5] == ["query", "rank", "molecule_id", "concentration_um", "score"]
    assert hits.num_rows > 0
    assert ns["hits"].num_rows > 0 and ns["mols"].shape[0] == 2
