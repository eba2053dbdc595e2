"""``molphenix demo``: simulate -> train MolPhenix, baselines and ablations -> ridge -> evaluate ->
``report.md``.

Every learned method trains with the frozen defaults of :class:`molphenix.train.TrainConfig`
(model config ``molphenix-small``: the same heads for every method, and the same samples seen;
each loss's own frozen batch size, learning rate, regularisation and undersampling rate, from
``molphenix.train.TUNED_DEFAULTS``). Only what defines the method differs:

=============================  ================================================================
method                         TrainConfig fields changed from the defaults
=============================  ================================================================
``molphenix``                  none (loss ``s2l``, arctan-L2 soft labels on the inputs)
``clip``                       ``loss="clip"``
``siglip``                     ``loss="siglip"``
``cloome``                     ``loss="cloome"``
``molphenix-no-conc``          ``concentration="none"`` (no explicit concentration encoding)
``molphenix-no-undersampling`` ``inactive_rate=1.0``
``molphenix-cosine-labels``    ``loss_kwargs={"u_norm": "unit", "unit_scale": ...}``: soft labels
                               from row-normalised inputs (cosine geometry; the scale is fitted
                               so the same fraction of pairs are soft positives; see
                               :class:`molphenix.losses.S2LLoss`)
``molphenix-no-soft-labels``   ``loss_kwargs={"sim_space": "none"}`` (identity labels: the S2L
                               loss without soft labels; docs/design/training.md)
``ridge``                      not trained: :func:`molphenix.baselines.fit_ridge`
=============================  ================================================================

Nothing is tuned here: the tuning of the defaults happened once, offline, on the validation
split (docs/design/training.md). The demo only sets the data size and the samples seen (equal
for every method; :data:`PROFILES`).

Layout of ``--out DIR``::

    DIR/demo.json               the profile and seed (a rerun with other settings is refused)
    DIR/data/                   the simulated dataset
    DIR/<method>/run/           the training run (molphenix.train.fit; resumable)
    DIR/<method>/metrics.json   metrics of every split (ridge: DIR/ridge/metrics.json + model)
    DIR/plots/*.png             the figures
    DIR/report.md               tables and figures

Resumable: a method whose ``metrics.json`` exists is skipped; an unfinished run resumes from its
last checkpoint (``fit``'s resume); ``overwrite`` starts over.

The same command on a bundled real screen (``molphenix demo --data cell-injury``) is
:mod:`molphenix.demo.real`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["DemoProfile", "PROFILES", "METHODS", "LEARNED", "run_demo"]


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run (the same for every method).

    Attributes:
        name: Profile name.
        n_molecules: Simulated molecules (both libraries).
        samples: Training samples seen by every learned method.
        batch_size: Samples per step (None: the TrainConfig default).
        eval_points: Validation evaluations per run (the recall-vs-samples curve).
        n_bootstrap: Bootstrap resamples of the reported 95% intervals.
        sim_overrides: Further simulator settings (SimulatorConfig fields).
    """

    name: str
    n_molecules: int
    samples: int
    batch_size: Optional[int] = None
    eval_points: int = 8
    n_bootstrap: int = 1000
    sim_overrides: Dict[str, Any] = field(default_factory=dict)


#: ``default`` and ``quick`` are sized for the demo's time limits (10 and 2 minutes) on 2 CPU
#: cores; ``tiny`` is for tests. Timings: benches/bench_demo.py, logs in
#: benches/results/cpu-intel-xeon-2c/2026-11-28-bench_demo.log (simulator 1.0: 217 s / 31 s) and
#: benches/results/cpu-amd-epyc-2c/2026-12-08T030012Z-bench_demo.log (simulator 1.1: 417 s / 49 s).
#: The default's 131,072 samples (512 steps of 256) are about half the tuning budget (256,000;
#: the validation recall of the tuning runs peaked at 300-600 steps).
PROFILES: Dict[str, DemoProfile] = {
    "default": DemoProfile("default", n_molecules=1500, samples=131072),
    "quick": DemoProfile("quick", n_molecules=500, samples=6144, n_bootstrap=500),
    "tiny": DemoProfile("tiny", n_molecules=40, samples=64, batch_size=16, eval_points=1,
                        n_bootstrap=20, sim_overrides={"min_replicates": 2, "max_replicates": 2}),
}

#: Learned methods and the TrainConfig fields each changes (see the module docstring).
LEARNED: Dict[str, Dict[str, Any]] = {
    "molphenix": {},
    "clip": {"loss": "clip"},
    "siglip": {"loss": "siglip"},
    "cloome": {"loss": "cloome"},
    "molphenix-no-conc": {"concentration": "none"},
    "molphenix-no-undersampling": {"inactive_rate": 1.0},
    "molphenix-cosine-labels": {"loss_kwargs": {"u_norm": "unit"}},  # + unit_scale, fitted
    "molphenix-no-soft-labels": {"loss_kwargs": {"sim_space": "none"}},
}
METHODS: Tuple[str, ...] = tuple(LEARNED) + ("ridge",)
BASELINES = ("clip", "siglip", "cloome", "ridge")
ABLATIONS = ("molphenix-no-conc", "molphenix-no-undersampling", "molphenix-cosine-labels",
             "molphenix-no-soft-labels")


class _Progress:
    """One line per stage with the elapsed wall time."""

    def __init__(self, log: Callable[[str], None]):
        self.t0 = time.perf_counter()
        self.log = log

    def __call__(self, msg: str) -> None:
        self.log(f"[{time.perf_counter() - self.t0:7.1f} s] {msg}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _check_state(out: Path, settings: Dict[str, Any], overwrite: bool = False) -> None:
    path = out / "demo.json"
    if overwrite and out.is_dir() and any(out.iterdir()):
        if not path.is_file():
            raise ValueError(f"out: {out} is not empty and holds no demo (demo.json); --overwrite deletes only a "
                             "demo's directory")
        import shutil

        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"out: {out} holds a demo run with other settings ({', '.join(diff)}); "
                             "use another --out, or --overwrite to start over")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _simulate(out: Path, profile: DemoProfile, seed: int, say) -> Any:
    from molphenix.data import load_dataset, simulate

    data = out / "data"
    if (data / "wells.parquet").is_file() and (data / "calls.parquet").is_file():
        ds = load_dataset(data)
        say(f"simulate: reusing {data} ({ds.n_wells} wells)")
        return ds
    ds = simulate(data, n_molecules=profile.n_molecules, seed=seed, overwrite=True, progress=False,
                  **profile.sim_overrides)
    say(f"simulate: {ds.n_wells} wells, {ds.molecules.num_rows} molecules, "
        f"datasets {ds.datasets} -> {data}")
    return ds


def _train_config(out: Path, method: str, profile: DemoProfile, seed: int, extra: Dict[str, Any]):
    from molphenix.train import TrainConfig

    fields: Dict[str, Any] = dict(data=str(out / "data"), out=str(out / method / "run"), seed=seed,
                                  samples=profile.samples, batch_size=profile.batch_size, progress=False)
    fields.update(LEARNED[method])
    fields.update(extra)
    # the batch size is the loss's frozen default unless the profile sets one; validation points
    # are spread over the resulting steps
    cfg = TrainConfig(**fields)
    return cfg.replace(eval_every=max(1, cfg.total_steps // max(1, profile.eval_points)))


def _unit_scale(ds, seed: int) -> float:
    """unit_scale of the cosine-label ablation, fitted on the training split's queries."""
    from molphenix.data import center_by_controls, make_splits
    from molphenix.eval.queries import split_queries
    from molphenix.losses import fit_unit_scale
    from molphenix.train import DEFAULT_SOFT_POSITIVE_FRACTION, TrainConfig

    splits = make_splits(ds, seed=TrainConfig().split_seed)
    centered = center_by_controls(ds.phenomic_matrix(), ds.column("batch"), ds.control_mask())
    q = split_queries(ds, splits.indices("train"), ds.calls, centered=centered)
    return fit_unit_scale(q["x"], DEFAULT_SOFT_POSITIVE_FRACTION, seed=seed)


def _train_and_evaluate(out: Path, method: str, ds, profile: DemoProfile, seed: int, say) -> Dict[str, Any]:
    from molphenix.eval import read_metrics
    from molphenix.train import evaluate_run, fit

    mpath = out / method / "metrics.json"
    if mpath.is_file():
        say(f"{method}: done earlier ({mpath})")
        return read_metrics(mpath)
    extra: Dict[str, Any] = {}
    if method == "molphenix-cosine-labels":
        extra["loss_kwargs"] = {"u_norm": "unit", "unit_scale": _unit_scale(ds, seed)}
    cfg = _train_config(out, method, profile, seed, extra)
    t0 = time.perf_counter()
    run = fit(cfg, log=lambda m: None)
    t1 = time.perf_counter()
    metrics = evaluate_run(run, out / "data", out=mpath, ranks_out=False,
                           n_bootstrap=profile.n_bootstrap, seed=seed)
    um = metrics.get("unseen_molecules", {}).get("active", {})
    say(f"{method}: trained {cfg.total_steps} steps ({profile.samples} samples) in {t1 - t0:.1f} s, "
        f"evaluated in {time.perf_counter() - t1:.1f} s; unseen_molecules active top-1% "
        f"{_fmt(um.get('top1'))}")
    return read_metrics(mpath)


def _ridge(out: Path, ds, profile: DemoProfile, seed: int, say) -> Dict[str, Any]:
    from molphenix.baselines import RidgeConfig, fit_ridge
    from molphenix.data import Splits
    from molphenix.eval import read_metrics

    mpath = out / "ridge" / "metrics.json"
    if mpath.is_file():
        say(f"ridge: done earlier ({mpath})")
        return read_metrics(mpath)
    t0 = time.perf_counter()
    split_file = out / "molphenix" / "run" / "split.parquet"
    splits = Splits.load(split_file, ds) if split_file.is_file() else None
    res = fit_ridge(ds, splits, config=RidgeConfig(n_bootstrap=profile.n_bootstrap, seed=seed),
                    out=out / "ridge")
    um = res.metrics.get("unseen_molecules", {}).get("active", {})
    say(f"ridge: alpha={res.grid['chosen_alpha']:g} (chosen on val) in {time.perf_counter() - t0:.1f} s; "
        f"unseen_molecules active top-1% {_fmt(um.get('top1'))}")
    return read_metrics(mpath)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def run_demo(out: str | Path = "molphenix-demo", *, quick: bool = False, seed: int = 0,
             profile: Optional[str] = None, methods: Optional[List[str]] = None,
             overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run the demo end to end (resumable) and return the path of ``report.md``.

    Args:
        out: Output directory (see the module docstring).
        quick: The ``quick`` profile (<= 2 minutes on 2 CPU cores) instead of ``default``.
        seed: Seed of the simulation and of every training run.
        profile: A :data:`PROFILES` name overriding ``quick`` (``"tiny"``: seconds, for tests).
        methods: Restrict to these methods (default: all of :data:`METHODS`; ``molphenix`` is
            always included: its split is the one the ridge anchor uses).
        overwrite: Delete the demo in ``out`` and start over.
        log: Receives one progress line per stage.

    Returns:
        Path of ``DIR/report.md``.

    Raises:
        ValueError: unknown profile or method; ``out`` holds a demo run with other settings.
    """
    from .report import make_plots, write_report

    name = profile or ("quick" if quick else "default")
    if name not in PROFILES:
        raise ValueError(f"profile: unknown demo profile {name!r}; expected one of {sorted(PROFILES)}")
    prof = PROFILES[name]
    chosen = list(METHODS) if methods is None else list(dict.fromkeys(["molphenix", *methods]))
    for m in chosen:
        if m not in METHODS:
            raise ValueError(f"methods: unknown method {m!r}; expected some of {list(METHODS)}")
    out = Path(out)
    say = _Progress(log)
    settings = {"profile": asdict(prof), "seed": int(seed)}
    _check_state(out, settings, overwrite)
    say(f"demo ({name} profile, seed {seed}) -> {out}")
    ds = _simulate(out, prof, seed, say)
    results: Dict[str, Dict[str, Any]] = {}
    for m in chosen:
        if m == "ridge":
            continue
        results[m] = _train_and_evaluate(out, m, ds, prof, seed, say)
    if "ridge" in chosen:
        results["ridge"] = _ridge(out, ds, prof, seed, say)
    plots = make_plots(out, ds, results, say)
    say(f"plots: {len(plots)} figures in {out / 'plots'}")
    report = write_report(out, results, plots, prof, seed, elapsed=say.elapsed)
    say(f"report: {report}")
    return report
