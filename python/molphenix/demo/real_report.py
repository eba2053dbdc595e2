"""``report.md`` and ``report.json`` of the real-data demo (:mod:`molphenix.demo.real`)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping

__all__ = ["write_real_report", "method_wall_times"]

_CAPTIONS = {
    "mrr_all": "Pooled MRR per method with its 95% interval, all queries; dashed: chance",
    "mrr_active": "Pooled MRR per method with its 95% interval, active queries; dashed: chance",
    "rank_cdf": "Rank of the true molecule: share of queries ranked r or better; dashed: chance",
}

_WHAT = {
    "molphenix": "MolPhenix: S2L loss with arctan-L2 soft labels (`loss=s2l`)",
    "molphenix-no-soft-labels": "MolPhenix without soft labels (`loss=s2l`, `sim_space=none`): the soft-label ablation",
    "clip": "CLIP loss",
    "siglip": "SigLIP loss",
    "cloome": "CLOOME loss (InfoLOOB on Hopfield retrievals)",
    "ridge": "ridge regression from the molecular input x dose to the phenotype (closed form; penalty on validation)",
    "molphenix-minimol": "MolPhenix on MiniMol embeddings (`mol_input=minimol`)",
    "ridge-minimol": "ridge on MiniMol embeddings: a linear probe (`mol_input=minimol`)",
}


def method_wall_times(results: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per method: fit and evaluation wall time summed over its folds (as recorded when each
    fold-run was made), and the steps, batch and samples seen per fold."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, m in results["methods"].items():
        pf = m["per_fold"]
        fit = sum(float(f.get("fit_wall_s") or 0.0) for f in pf)
        ev = sum(float(f.get("eval_wall_s") or 0.0) for f in pf)
        out[name] = {"fit_wall_s": fit, "eval_wall_s": ev, "wall_s": fit + ev,
                     "total_steps": [f.get("total_steps") for f in pf],
                     "steps": [f.get("steps") for f in pf],
                     "batch_size": [f.get("batch_size") for f in pf],
                     "samples_seen": [f.get("samples_seen") for f in pf],
                     "best_step": [f.get("best_step") for f in pf]}
    return out


def _span(vals: List[Any]) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    lo, hi = min(v), max(v)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def _fields(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in spec.items()) or "-"


def write_real_report(out: Path, results: Mapping[str, Any], plots: Mapping[str, Path], *, data: str,
                      profile: Any, seed: int, command: str, commit: str, minimol: Mapping[str, Any],
                      skipped: List[str], elapsed: float) -> Path:
    """Write ``out/report.md`` and ``out/report.json`` and return the markdown's path.

    Args:
        out: The demo directory.
        results: :func:`molphenix.experiment.run_cv`'s results.
        plots: ``{name: path}`` of the figures.
        data: The bundled dataset's name.
        profile: The :class:`~molphenix.demo.real.RealDemoProfile` used.
        seed: Training and bootstrap seed.
        command: The command line that ran.
        commit: The git commit of the code.
        minimol: :func:`molphenix.demo.real.minimol_status`.
        skipped: Methods skipped because the MiniMol extra is missing.
        elapsed: Wall time of this invocation in seconds.

    Returns:
        Path of ``report.md``.
    """
    from molphenix.eval.io import atomic_write_bytes, write_metrics
    from molphenix.experiment.report import comparison_table, fold_table, notes, pooled_table

    from .real import REAL_DATASETS, REAL_METHODS, MINIMOL_METHODS

    desc, attribution = REAL_DATASETS[data]
    specs = {**REAL_METHODS, **MINIMOL_METHODS}
    walls = method_wall_times(results)
    sizes = results["fold_sizes"]
    n_q = sum(s["n_queries"] for s in sizes)
    n_m = sum(s["n_molecules"] for s in sizes)
    cands = sorted({s["n_candidates"] for s in sizes})
    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from molphenix.train.config import DEFAULT_EPOCHS, DEFAULT_PATIENCE

    budget = ("the TrainConfig default budget (on a training set this small: at most "
              f"{DEFAULT_EPOCHS} epochs, validated every epoch, stopped after {DEFAULT_PATIENCE} validations "
              "without a better validation MRR)" if not profile.train else
              "the demo's " + profile.name + " setting " + ", ".join(f"`{k}={v}`" for k, v in profile.train.items()
                                                                    if k in ("samples", "steps", "epochs"))
              + " (every learned method equally)")
    lines: List[str] = [f"# molphenix demo report: real data ({data})", ""]
    lines += [f"Written {written} by `{command}` (git commit `{commit}`; {profile.name} profile, seed {seed}). "
              f"This invocation took {elapsed:.0f} s (a resumed run counts only its own part; per-method times "
              "below are those of the fold-runs as made).", ""]
    lines += [attribution, ""]
    lines += ["## Data and protocol", "",
              f"- **Data:** `{data}`, {desc}.",
              f"- **Protocol:** grouped {results['folds']}-fold cross-validation (`molphenix cv`): the molecules' "
              f"Bemis-Murcko scaffold groups are dealt into {results['folds']} folds (split seed "
              f"{results['split_seed']}); each molecule is tested once, in its fold, by models trained on the "
              "other folds; a validation set of whole scaffold groups from those folds picks each run's best "
              "checkpoint (and ridge's penalty). "
              f"{n_m} molecules, {n_q} (molecule, concentration) queries pooled over the folds.",
              f"- **Retrieval:** match `{results['match']}`: each query (a treated molecule at one concentration, "
              "its replicate wells averaged after per-batch control centering) ranks the molecules of its fold "
              f"({', '.join(str(c) for c in cands)} candidates); the true molecule's rank is scored. With so few "
              "candidates top-1% and top-5% cover one or two molecules, so the tables give top-1 and the top-K% "
              "hits as counts next to the rates, and the chance row the expected counts.",
              f"- **Training:** every learned method has the same heads (`molphenix-small`), each loss's frozen "
              f"defaults and {budget}.",
              ""]
    lines += ["## Methods", "",
              "| method | what | TrainConfig fields | steps taken x batch per fold (samples seen; planned steps) "
              "| wall time, all folds (fit + evaluation) |",
              "|---|---|---|---|---|"]
    for name in results["methods"]:
        w = walls[name]
        if specs.get(name, {}).get("loss") == "ridge":
            budget_cell = "closed form"
        else:
            taken = w["steps"] if any(v is not None for v in w["steps"]) else w["total_steps"]
            budget_cell = (f"{_span(taken)} x {_span(w['batch_size'])} ({_span(w['samples_seen'])}; "
                           f"{_span(w['total_steps'])})")
        lines.append(f"| {name} | {_WHAT.get(name, name)} | {_fields(specs.get(name, {}))} | {budget_cell} | "
                     f"{w['wall_s']:.0f} s ({w['fit_wall_s']:.0f} + {w['eval_wall_s']:.0f}) |")
    lines.append("")
    lines.append("Molecular input: Morgan count fingerprints unless `mol_input` says otherwise.")
    if skipped:
        lines += ["", minimol["line"]]
    elif any(n in MINIMOL_METHODS for n in results["methods"]):
        lines += ["", "MiniMol variants included (the `molphenix[minimol]` extra is installed; the runs record "
                      "the embedder version in `run.json`)."]
    lines += ["", "## Pooled results, all queries", "", *pooled_table(results, "all"), "",
              "## Pooled results, active queries", "", *pooled_table(results, "active"), ""]
    for subset in ("all", "active"):
        t = comparison_table(results, subset)
        if t:
            lines += [f"## Paired comparisons against {results['reference']}, {subset} queries", "",
                      "A is the reference; a negative A - B (a positive one for mean rank) means the other "
                      "method B is ahead.", "", *t, ""]
    lines += ["## Per fold: unseen-molecule MRR (fit + evaluation wall time)", "", *fold_table(results), ""]
    if plots:
        lines += ["## Figures", ""]
        for key, path in plots.items():
            rel = Path(path).relative_to(out).as_posix()
            lines += [f"### {_CAPTIONS.get(key, key)}", "", f"![{key}]({rel})", ""]
    lines += ["## Notes", "", *notes(results),
              "- Chance: a random ranking of the same candidates (MRR H_N / N, top-1 1 / N, mean rank (N + 1) / 2).",
              ""]
    lines += ["## Files", "",
              "`report.json` (this report as data, with the full cross-validation results), `cv/results.json`, "
              "`cv/<method>/ranks.parquet` (pooled per-query ranks), `cv/<method>/fold-<k>/` (the runs: "
              "`molphenix evaluate` and `load_run` read them), `data/` (the dataset copy with its NOTICE), "
              "`plots/`.", ""]
    md = out / "report.md"
    atomic_write_bytes(md, "\n".join(lines).encode())
    doc = {
        "kind": "real_demo",
        "data": data,
        "description": desc,
        "attribution": attribution,
        "command": command,
        "git_commit": commit,
        "written_utc": written,
        "profile": asdict(profile),
        "seed": int(seed),
        "invocation_wall_s": float(elapsed),
        "minimol": {"included": [n for n in results["methods"] if n in MINIMOL_METHODS], "skipped": list(skipped),
                    "line": minimol["line"] if skipped else ""},
        "methods": {n: {"fields": specs.get(n, {}), **walls[n]} for n in results["methods"]},
        "plots": {k: Path(p).relative_to(out).as_posix() for k, p in plots.items()},
        "cv": dict(results),
    }
    write_metrics(out / "report.json", doc)
    return md
