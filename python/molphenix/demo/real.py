"""``molphenix demo --data cell-injury``: the grouped cross-validation protocol on a bundled real
screen, every method, one report.

This is orchestration only: the folds, the runs, the pooling and the paired comparisons are
:func:`molphenix.experiment.run_cv`'s. The demo fixes the protocol's settings, picks the methods,
and writes a report (markdown, JSON, figures) with the data's attribution.

Methods (the fields each sets on top of the shared ones; every learned method has the same
heads, ``molphenix-small``, and the training budget of the :class:`~molphenix.train.TrainConfig`
defaults, or the quick setting below, equally):

===========================  ======================================================================
method                       fields
===========================  ======================================================================
``molphenix``                ``loss="s2l"`` (MolPhenix: S2L with arctan-L2 soft labels)
``molphenix-no-soft-labels`` ``loss="s2l", loss_kwargs={"sim_space": "none"}`` (the same loss with
                             identity labels: the soft-label ablation)
``clip``                     ``loss="clip"``
``siglip``                   ``loss="siglip"``
``cloome``                   ``loss="cloome"``
``ridge``                    ``loss="ridge"`` (closed-form ridge from Morgan counts x dose to the
                             phenotype; penalty chosen on each fold's validation molecules)
``molphenix-minimol``        ``loss="s2l", mol_input="minimol"`` (only with ``molphenix[minimol]``)
``ridge-minimol``            ``loss="ridge", mol_input="minimol"`` (a linear probe on MiniMol;
                             only with the extra)
===========================  ======================================================================

Morgan count fingerprints are the molecular input of the first six (the model's default). The two
MiniMol variants are MolPhenix and the linear probe: the method the paper proposes and the
simplest reading of the pretrained embedding; without the extra they are skipped and the report
says so in one line, with the install command.

Protocol (:data:`REAL_PROFILES`): ``folds`` scaffold-grouped folds (5; ``quick`` 3), split seed 0,
``match="molecule"`` (each (molecule, concentration) query ranks the fold's molecules: 19-20
candidates with 5 folds of the primary dataset's 99 molecules, so top-1% is top-1 and the report
says so), the best-validation checkpoint of each
fold, cluster-bootstrap intervals over molecules, paired comparisons against ``molphenix``.

Layout of ``--out DIR``::

    DIR/demo.json          the settings (a rerun with other settings is refused)
    DIR/data/              a copy of the bundled dataset + calls.parquet (the activity calls
                           every run would compute, computed once: call_activity with the
                           TrainConfig defaults' p_cutoff and split seed)
    DIR/cv/                the cross-validation (run_cv's layout: cv.json, folds.parquet,
                           <method>/fold-<k>/ runs, results.json, its own report.md)
    DIR/plots/*.png        pooled MRR with intervals vs chance; rank distributions
    DIR/report.md          the report; DIR/report.json the same as data

Resumable: rerunning the same command skips every finished fold-run (run_cv's resume) and
resumes an interrupted one from its last checkpoint; ``overwrite`` starts over.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["REAL_DATASETS", "REAL_METHODS", "MINIMOL_METHODS", "REAL_PROFILES", "RealDemoProfile",
           "run_real_demo"]

#: Bundled datasets the real-data demo runs on: name -> (description, attribution line).
REAL_DATASETS: Dict[str, Tuple[str, str]] = {
    "cell-injury": (
        "U2OS Cell Painting profiles of reference compounds that cause known kinds of cellular injury: "
        "3,199 wells (1,752 treated, 1,447 DMSO controls), 111 structures at 0.02-20 uM, 352 CellProfiler "
        "features, 24 h and 48 h treatment as separate datasets. The folds and the pooled queries are the "
        "molecules of the primary dataset (the one with the most wells: the 24 h screen); the 48 h wells are "
        "each run's unseen-dataset split, reported per fold in cv/results.json, not pooled",
        "Data: Dahlin et al., \"Reference compounds for characterizing cellular injury in high-content "
        "cellular morphology assays\", Nature Communications 14, 1364 (2023); normalized, feature-selected "
        "profiles from github.com/axiomcura/predicting-cell-injury-compounds; licensed under CC BY 4.0 "
        "(https://creativecommons.org/licenses/by/4.0/); converted to the molphenix dataset format "
        "(changes listed in the dataset's NOTICE). No endorsement by the authors is implied.",
    ),
}

#: The demo's methods on Morgan inputs and their TrainConfig fields (module docstring).
REAL_METHODS: Dict[str, Dict[str, Any]] = {
    "molphenix": {"loss": "s2l"},
    "molphenix-no-soft-labels": {"loss": "s2l", "loss_kwargs": {"sim_space": "none"}},
    "clip": {"loss": "clip"},
    "siglip": {"loss": "siglip"},
    "cloome": {"loss": "cloome"},
    "ridge": {"loss": "ridge"},
}
#: The MiniMol variants, run when the ``molphenix[minimol]`` extra is importable.
#: (``featurizer_kwargs={}``: MiniMol's own defaults, whatever Morgan settings are shared.)
MINIMOL_METHODS: Dict[str, Dict[str, Any]] = {
    "molphenix-minimol": {"loss": "s2l", "mol_input": "minimol", "featurizer_kwargs": {}},
    "ridge-minimol": {"loss": "ridge", "mol_input": "minimol", "featurizer_kwargs": {}},
}
REFERENCE = "molphenix"


@dataclass(frozen=True)
class RealDemoProfile:
    """Settings of one real-data demo run (the same for every method).

    Attributes:
        name: Profile name.
        folds: Scaffold-grouped folds K.
        train: TrainConfig fields shared by every method (empty: the TrainConfig defaults; the
            budget included).
        n_bootstrap: Cluster-bootstrap resamples of the pooled intervals and comparisons.
        match: ``"molecule"`` or ``"pair"`` (:func:`molphenix.train.evaluate_run`).
        split_seed: Seed of the fold partition and the folds' validation draws.
    """

    name: str
    folds: int
    train: Dict[str, Any] = field(default_factory=dict)
    n_bootstrap: int = 2000
    match: str = "molecule"
    split_seed: int = 0


#: ``default``: 5 folds with the TrainConfig defaults (the target is <= 15 minutes on 2 CPU
#: cores); ``quick``: 3 folds and a budget of 8,192 samples per fold-run for every learned
#: method (<= 3 minutes); ``tiny``: seconds, for tests (a small model, 4 steps).
REAL_PROFILES: Dict[str, RealDemoProfile] = {
    "default": RealDemoProfile("default", folds=5),
    "quick": RealDemoProfile("quick", folds=3, train={"samples": 8192}, n_bootstrap=1000),
    "tiny": RealDemoProfile("tiny", folds=3, n_bootstrap=100, train={
        "steps": 4, "batch_size": 16, "eval_every": 2, "featurizer_kwargs": {"n_bits": 256},
        "model_overrides": {"phenomic_hidden": 32, "molecular_hidden": 32, "embed_dim": 16,
                            "phenomic_blocks": 1}}),
}

DEMO_FILE = "demo.json"


def minimol_status() -> Dict[str, Any]:
    """Whether the MiniMol variants run here: ``{"included": bool, "methods": [...], "line": str}``
    (``line``: the report's one line when they are skipped, with the install command)."""
    from molphenix._extras import MissingExtraError
    from molphenix.data.minimol import MINIMOL_PACKAGE, minimol_available

    names = list(MINIMOL_METHODS)
    if minimol_available():
        return {"included": True, "methods": names, "line": ""}
    install = MissingExtraError("minimol", "minimol", MINIMOL_PACKAGE).install
    return {"included": False, "methods": names,
            "line": f"MiniMol variants ({', '.join(names)}) skipped: the optional extra molphenix[minimol] "
                    f"is not installed; install it with `{install}` (see docs/minimol.md) and rerun the "
                    "same command (finished fold-runs are kept)."}


def _git_commit() -> str:
    """The source checkout's commit (``-dirty`` with uncommitted changes under python/), or where
    the package came from when it is not a git checkout."""
    from molphenix._version import __version__

    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        sha = out.stdout.strip() if out.returncode == 0 else ""
        if sha and (root / "python" / "molphenix").is_dir():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "python"],
                                   cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"unknown (not a git checkout; molphenix {__version__})"


def _open(out: Path, settings: Dict[str, Any], overwrite: bool) -> None:
    """Create or check ``out/demo.json`` (``overwrite``: empty a demo directory first)."""
    path = out / DEMO_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not path.is_file():
        raise ValueError(f"out: {out} is not empty and holds no demo ({DEMO_FILE}); choose another directory")
    if overwrite and path.is_file():
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            desc = "; ".join(f"{k}: {_short(settings.get(k))} now vs {_short(old.get(k))} there" for k in diff)
            raise ValueError(f"out: {out} holds a demo run with other settings ({desc}); use another --out, "
                             "or --overwrite to start over")
        return
    from molphenix._atomic import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."


def _prepare_data(out: Path, name: str, say) -> Path:
    """Copy the bundled dataset into ``out/data`` and add the activity calls every run would
    compute (the same function, cutoff and seed), once; returns the directory."""
    from molphenix import datasets
    from molphenix.data import call_activity, load_dataset
    from molphenix.data.io import save_calls
    from molphenix.train import TrainConfig

    data = out / "data"
    if (data / "calls.parquet").is_file():
        say(f"data: reusing {data}")
        return data
    src = datasets.path(name)
    tmp = out / "data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    ds = load_dataset(tmp)
    t0 = time.perf_counter()
    defaults = TrainConfig()
    calls = call_activity(ds, cutoff=defaults.p_cutoff, seed=defaults.split_seed)
    save_calls(calls, tmp / "calls.parquet")
    shutil.rmtree(data, ignore_errors=True)
    tmp.rename(data)
    say(f"data: {name} ({ds.n_wells} wells, {ds.molecules.num_rows} molecules) -> {data}; activity calls "
        f"computed once in {time.perf_counter() - t0:.1f} s")
    return data


def _bundled_sha256(name: str) -> str:
    """Content hash of the bundled dataset (a changed copy in a newer package is other settings)."""
    from molphenix import datasets
    from molphenix.train import dataset_fingerprint

    return dataset_fingerprint(datasets.load(name))["sha256"]


def _finished(cv: Path, names: List[str], folds: int) -> int:
    return sum((cv / n / f"fold-{k}" / "cv_fold.json").is_file() for n in names for k in range(folds))


def run_real_demo(out: str | Path = "molphenix-demo-cell-injury", *, data: str = "cell-injury",
                  quick: bool = False, seed: int = 0, profile: Optional[str] = None,
                  methods: Optional[List[str]] = None, overwrite: bool = False,
                  command: Optional[str] = None, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the real-data demo and return the path of ``report.md``.

    Args:
        out: Output directory (layout in the module docstring).
        data: A bundled dataset's name (:data:`REAL_DATASETS`).
        quick: The ``quick`` profile (3 folds, a smaller budget: <= 3 minutes on 2 CPU cores).
        seed: Training seed of every run (and the bootstrap seed).
        profile: A :data:`REAL_PROFILES` name overriding ``quick`` (``"tiny"``: for tests).
        methods: Restrict to these methods (``molphenix``, the reference, is always included;
            MiniMol variants only when the extra is installed). Default: all.
        overwrite: Delete a demo in ``out`` and start over.
        command: The command line to record in the report (default: the equivalent
            ``molphenix demo`` command).
        log: Receives one progress line per step.

    Returns:
        Path of ``DIR/report.md``.

    Raises:
        ValueError: an unknown dataset, profile or method; ``out`` holds something else or a
            demo with other settings.
    """
    from molphenix.experiment import run_cv

    from .real_report import write_real_report

    if data not in REAL_DATASETS:
        raise ValueError(f"data: unknown bundled dataset {data!r}; expected one of {sorted(REAL_DATASETS)}")
    name = profile or ("quick" if quick else "default")
    if name not in REAL_PROFILES:
        raise ValueError(f"profile: unknown demo profile {name!r}; expected one of {sorted(REAL_PROFILES)}")
    prof = REAL_PROFILES[name]
    known = {**REAL_METHODS, **MINIMOL_METHODS}
    chosen = list(known) if methods is None else list(dict.fromkeys([REFERENCE, *methods]))
    for m in chosen:
        if m not in known:
            raise ValueError(f"methods: unknown method {m!r}; expected some of {list(known)}")
    mm = minimol_status()
    skipped = [m for m in chosen if m in MINIMOL_METHODS and not mm["included"]]
    chosen = [m for m in chosen if m not in skipped]
    out = Path(out)
    if command is None:
        command = "molphenix demo " + " ".join(
            [f"--data {shlex.quote(data)}", f"--out {shlex.quote(str(out))}"] + (["--quick"] if name == "quick" else [])
            + ([f"--seed {seed}"] if seed else []))
    from .runner import _Progress  # the simulator demo's progress lines, same format

    say = _Progress(log)
    settings = {"kind": "real", "data": data, "dataset_sha256": _bundled_sha256(data), "profile": asdict(prof),
                "seed": int(seed)}
    _open(out, settings, overwrite)
    cv = out / "cv"
    say(f"demo (real data: {data}; {name} profile: {prof.folds} folds, match {prof.match}, seed {seed}) -> {out}")
    if skipped:
        say(mm["line"])
    done = _finished(cv, chosen, prof.folds)
    total = len(chosen) * prof.folds
    if done:
        say(f"resuming: {done} of {total} fold-runs finished earlier are kept and skipped")
    else:
        say(f"{total} fold-runs ({len(chosen)} methods x {prof.folds} folds); rerun the same command to "
            "resume after an interruption (finished fold-runs are skipped)")
    ddir = _prepare_data(out, data, say)
    train = {"seed": int(seed), **json.loads(json.dumps(prof.train))}
    res = run_cv(ddir, cv, {m: known[m] for m in chosen}, folds=prof.folds, split_seed=prof.split_seed,
                 train=train, match=prof.match, checkpoint="best", n_bootstrap=prof.n_bootstrap, seed=seed,
                 reference=REFERENCE, log=say)
    plots_made = _plots(out, res.results, say)
    report = write_real_report(out, res.results, plots_made, data=data, profile=prof, seed=seed,
                               command=command, commit=_git_commit(), minimol=mm, skipped=skipped,
                               elapsed=say.elapsed)
    say(f"report: {report}")
    return report


def _plots(out: Path, results: Dict[str, Any], say) -> Dict[str, Path]:
    from molphenix.eval import plots, read_query_ranks

    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    made: Dict[str, Path] = {}
    methods = results["methods"]
    first = next(iter(methods.values()))["pooled"]["all"]
    for subset in ("all", "active"):
        vals = {}
        for n, m in methods.items():
            g = m["pooled"][subset]
            if g["n_queries"] and g.get("mrr") is not None:
                ci = g["ci95"]["mrr"]
                vals[n] = (g["mrr"], ci[0], ci[1])
        if not vals:
            continue
        g0 = next(iter(methods.values()))["pooled"][subset]
        try:
            made[f"mrr_{subset}"] = plots.plot_metric_intervals(
                vals, pdir / f"mrr_{subset}.png", chance=g0["chance"]["mrr"], xlabel="pooled MRR (95% interval)",
                title=f"Unseen molecules, {subset} queries ({g0['n_queries']}): pooled MRR vs chance")
        except (ValueError, RuntimeError) as exc:
            say(f"plots: skipped mrr_{subset} ({exc})")
    ranks = {}
    for n in methods:
        t = read_query_ranks(out / "cv" / n / "ranks.parquet")
        ranks[n] = (t["rank"], t["n_candidates"])
    try:
        made["rank_cdf"] = plots.plot_rank_cdfs(
            ranks, pdir / "rank_cdf.png",
            title=f"Unseen molecules, all {first['n_queries']} queries: rank of the true molecule")
    except (ValueError, RuntimeError) as exc:
        say(f"plots: skipped rank_cdf ({exc})")
    say(f"plots: {len(made)} figures in {pdir}")
    return made
