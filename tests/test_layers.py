"""The package's layers point one way (docs/DEV.md), and nothing in it names an issue.

Every ``import`` of every module under ``python/molphenix`` is read from its syntax tree,
including the imports inside functions (a lazy import is still a dependency). A *unit* is a
subpackage (``molphenix/train/``) or a root-level module (``molphenix/_atomic.py``,
``molphenix/info.py``); ``molphenix/__init__.py`` and ``__main__.py`` are the package's entry
points and may import anything. The tests fail on:

* an import that points up the layer map (:data:`LEVELS`), or a unit missing from the map;
* a cycle between units (also between units on the same level, and between root modules);
* a root-level private module (``molphenix/_x.py``) that imports a subpackage;
* an import of a ``_private`` module or name of another subpackage (root-level private modules
  are the shared helpers and may be imported by anyone);
* a string or comment in the package that names an issue number;
* a module of ``molphenix/train`` over 600 lines.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

PKG = Path(__file__).resolve().parents[1] / "python" / "molphenix"

#: The layer map (docs/DEV.md). An import may point to a lower level or to the same level (then
#: the units of that level must not form a cycle). Root-level private modules sit below every
#: subpackage; the compiled extension below them.
LEVELS: Dict[str, int] = {
    "cli": 7,
    "demo": 6, "benchmark": 6, "info": 6, "experiment": 6,
    "baselines": 5,
    "train": 4,
    "eval": 3,
    "nn": 2, "losses": 2, "retrieval": 2, "distributed": 2,
    "ops": 1, "datasets": 1,
    "data": 0,
    # root-level private helpers (shared by design) and the extension
    "_atomic": -1, "_ext": -1, "_extras": -1, "_options": -1, "_similarity": -1, "_version": -1, "_warnings": -1,
    "_C": -2,
}
ENTRY_POINTS = {"molphenix", "__main__"}

def _modules() -> Dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(mod: str, path: Path) -> List[Tuple[str, int]]:
    """``(imported molphenix module or module.name, line)`` of every import in ``path``."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "molphenix"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "molphenix":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                # "from pkg import submodule" imports the submodule (the extension _C included)
                found.append((sub if sub in MODULES or sub == "molphenix._C" else f"{target}:{a.name}", node.lineno))
    return found


def _unit(target: str) -> str:
    parts = target.split(":")[0].split(".")
    return parts[1] if len(parts) > 1 else "molphenix"


def _edges() -> List[Tuple[str, str, str, str, int]]:
    """``(source unit, target unit, source module, target, line)`` across units."""
    out = []
    for mod, path in MODULES.items():
        src = _unit(mod)
        for target, line in _imports(mod, path):
            dst = _unit(target)
            if src != dst and dst not in ENTRY_POINTS:
                out.append((src, dst, mod, target, line))
    return out


EDGES = _edges()


def test_every_unit_is_on_the_layer_map():
    units = {_unit(m) for m in MODULES} - ENTRY_POINTS
    missing = sorted(units - set(LEVELS))
    assert not missing, (f"units {missing} are not on the layer map: add them to LEVELS here and to "
                         "the map in docs/DEV.md")


def test_imports_point_down():
    up = [f"{m}:{line} imports {t} ({s} level {LEVELS[s]} -> {d} level {LEVELS[d]})"
          for s, d, m, t, line in EDGES if s not in ENTRY_POINTS and LEVELS.get(d, -9) > LEVELS.get(s, -9)]
    assert not up, "imports that point up the layers (docs/DEV.md):\n" + "\n".join(up)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_units():
    graph: Dict[str, Set[str]] = defaultdict(set)
    where: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    for s, d, m, t, line in EDGES:
        if s in ENTRY_POINTS:
            continue
        graph[s].add(d)
        graph[d]
        where[(s, d)].append(f"{m}:{line} -> {t}")
    cycles = _cycles(graph)
    detail = [f"{a} -> {b}: {where[(a, b)][0]}" for comp in cycles for a in comp for b in comp if (a, b) in where]
    assert not cycles, f"import cycles between units {cycles}:\n" + "\n".join(detail)


def test_root_private_modules_import_no_subpackage():
    bad = [f"{m}:{line} imports {t}" for s, d, m, t, line in EDGES
           if s.startswith("_") and s not in ENTRY_POINTS and (PKG / d).is_dir()]
    assert not bad, "root-level private modules must import no subpackage:\n" + "\n".join(bad)


def _private_imports() -> Set[Tuple[str, str, str]]:
    out = set()
    for s, d, m, t, line in EDGES:
        if s in ENTRY_POINTS or not (PKG / d).is_dir():
            continue  # root-level modules (private or not) are fine to import
        module, _, name = t.partition(":")
        below = module.split(".")[2:] + ([name] if name else [])  # the parts inside the unit
        if any(p.startswith("_") and not p.startswith("__") for p in below):
            target = ".".join([d] + below)
            out.add((m[len("molphenix."):], target, f"{m}:{line}"))
    return out


def test_no_private_name_crosses_subpackages():
    found = sorted(f"{where} imports molphenix.{b}" for _, b, where in _private_imports())
    assert not found, ("imports of another subpackage's _private module or name (make it public, or "
                       "move a shared helper to a root-level private module):\n" + "\n".join(found))


def test_training_modules_stay_readable():
    """No module of molphenix.train is over 600 lines (the loop is split by concern)."""
    long = {p.name: n for p in (PKG / "train").glob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules of molphenix/train over 600 lines: {long}"


_ISSUE = re.compile(r"(?i)\bissues?\s*#?\s*\d+|(?<![\w\[!;&,$/])#\d+\b")


def test_no_issue_number_in_the_package():
    hits = []
    for p in sorted(PKG.rglob("*")):
        if p.suffix not in (".py", ".json", ".pyi", ".md", ".txt", ".yaml", ".yml"):
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if _ISSUE.search(line):
                hits.append(f"{p.relative_to(PKG.parent)}:{i}: {line.strip()[:100]}")
    assert not hits, "package text names an issue (describe the feature instead):\n" + "\n".join(hits)


def test_the_checks_can_fail():
    """The detectors find what they are for (so a passing run means something)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _ISSUE.search("see issue 7") and _ISSUE.search("(#14)") and _ISSUE.search("Issue #10's bar")
    assert not _ISSUE.search('"[!#1;!#6]" ([#6]) a tissue of 7')
    # it reads imports inside functions, relative ones, and "from molphenix import _C"
    assert any(t == "molphenix._C" for t, _ in _imports("molphenix._ext", PKG / "_ext.py"))
    assert any(t.startswith("molphenix.train.") for t, _ in _imports("molphenix.train", PKG / "train" / "__init__.py"))
    assert ("train", "eval") in {(s, d) for s, d, *_ in EDGES}  # validation uses eval's metrics (lazily)
