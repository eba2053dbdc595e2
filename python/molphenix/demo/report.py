"""The demo's figures and ``report.md``."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

__all__ = ["make_plots", "write_report", "metrics_table", "SPLIT_TITLES"]

SPLIT_TITLES = {
    "unseen_molecules": "unseen molecules (scaffold split: zero-shot retrieval of new molecules)",
    "unseen_wells": "unseen wells (held-out replicate wells of training molecules)",
    "unseen_dataset": "unseen dataset (the second library, measured in other batches)",
}
_SPLIT_ORDER = ("unseen_molecules", "unseen_wells", "unseen_dataset")


def make_plots(out: Path, ds, results: Mapping[str, Mapping[str, Any]], say: Callable[[str], None]
               ) -> Dict[str, Path]:
    """Write the report's figures into ``out/plots`` and return ``{name: path}``.

    Figures: recall vs samples seen (validation, per learned method); per-concentration recall on
    unseen molecules; CDFs of cosine vs arctan-L2 similarity of the training inputs for random,
    active-active, inactive-inactive and active-inactive pairs (at the MolPhenix run's scale);
    a 2-D PCA projection of MolPhenix's molecule embeddings of unseen molecules, coloured by
    activity. A figure that cannot be drawn (e.g. too little data) is reported and skipped.
    """
    from molphenix.eval import plots
    from molphenix.train import load_run

    from ._evaluate import chance_at, molecule_embeddings, recall_curve, split_inputs

    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    made: Dict[str, Path] = {}
    run = out / "molphenix" / "run"
    tm = load_run(run)

    def attempt(name: str, fn: Callable[[], Path]) -> None:
        try:
            made[name] = fn()
        except (ValueError, RuntimeError) as exc:  # too little data for this figure
            say(f"plots: skipped {name} ({exc})")

    curves = {m: recall_curve(out / m / "run") for m in results if m != "ridge"}
    curves = {m: c for m, c in curves.items() if c}
    val = split_inputs(run, ds, tm, "val")
    chance = chance_at(tm.config.eval_fraction, len(val["molecule"])) if val is not None else None
    pct = f"{100 * tm.config.eval_fraction:g}"
    if curves:
        attempt("recall_vs_samples", lambda: plots.plot_recall_vs_samples(
            curves, pdir / "recall_vs_samples.png", chance=chance,
            ylabel=f"top-{pct}% recall (validation, active queries)",
            title="Validation recall during training"))
    per = {m: r["unseen_molecules"] for m, r in results.items() if "unseen_molecules" in r}
    if per:
        attempt("per_concentration", lambda: plots.plot_per_concentration(
            per, pdir / "per_concentration_unseen_molecules.png", key="top1", subset="active",
            title="Unseen molecules: top-1% recall per concentration (active queries)"))
    train = split_inputs(run, ds, tm, "train")
    sigma = tm.meta.get("sigma")
    if train is not None and len(train["molecule"]) >= 2:
        x = train["x"]
        keep = np.linalg.norm(x, axis=1) > 0
        attempt("similarity_cdfs", lambda: plots.plot_similarity_cdfs(
            x[keep], np.asarray(train["active"])[keep], pdir / "similarity_cdfs.png",
            scale=float(sigma) if sigma else 1.0,
            title="Training inputs: cosine vs arctan-L2 similarity (MolPhenix's scale)"))
    um = split_inputs(run, ds, tm, "unseen_molecules")
    if um is not None and len(um["molecule"]) >= 3:
        emb = molecule_embeddings(tm, ds, um)
        attempt("projection", lambda: plots.plot_embedding_projection(
            emb, um["active"], pdir / "projection_unseen_molecules.png",
            title="MolPhenix molecule embeddings, unseen molecules (PCA)"))
    return made


def _cell(g: Mapping[str, Any], key: str) -> str:
    v = g.get(key)
    if v is None:
        return "n/a"
    ci = (g.get("ci95") or {}).get(key)
    if ci is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def metrics_table(results: Mapping[str, Mapping[str, Any]], split: str, *,
                  methods: Optional[List[str]] = None) -> List[str]:
    """Markdown table lines of one split: top-1%/top-5% recall of all and active queries, with
    95% intervals, and a chance row."""
    rows = ["| method | top-1% (all) | top-5% (all) | top-1% (active) | top-5% (active) |",
            "|---|---|---|---|---|"]
    chance = None
    counts = None
    for m in methods or list(results):
        r = results.get(m, {}).get(split)
        if r is None:
            continue
        rows.append(f"| {m} | {_cell(r['all'], 'top1')} | {_cell(r['all'], 'top5')} | "
                    f"{_cell(r['active'], 'top1')} | {_cell(r['active'], 'top5')} |")
        chance = chance or r["all"].get("chance")
        counts = counts or (r["n_candidates"], r["all"]["n_queries"], r["active"]["n_queries"])
    if chance:
        rows.append(f"| *chance* | {chance['top1']:.3f} | {chance['top5']:.3f} | "
                    f"{chance['top1']:.3f} | {chance['top5']:.3f} |")
    if counts:
        rows.append("")
        rows.append(f"{counts[0]} candidates; {counts[1]} queries, {counts[2]} of them active.")
    return rows


def _quality_lines(results: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The acceptance checks on unseen molecules (active top-1%), reported as measured."""
    def get(m):
        return results.get(m, {}).get("unseen_molecules", {}).get("active", {})

    s2l = get("molphenix")
    if not s2l or s2l.get("top1") is None:
        return []
    ch = s2l["chance"]["top1"]
    lines = ["| method | top-1% (active) | x chance | vs clip |", "|---|---|---|---|"]
    clip = get("clip").get("top1")
    for m in results:
        g = get(m)
        if g.get("top1") is None:
            continue
        ratio = "n/a" if not clip else f"{g['top1'] / clip:.2f}x"
        lines.append(f"| {m} | {_cell(g, 'top1')} | {g['top1'] / ch:.1f}x | {ratio} |")
    checks = [f"MolPhenix at least 5x chance: **{'yes' if s2l['top1'] >= 5 * ch else 'no'}** "
              f"({s2l['top1'] / ch:.1f}x)"]
    if clip:
        checks.append(f"MolPhenix at least 0.9x CLIP: **{'yes' if s2l['top1'] >= 0.9 * clip else 'no'}** "
                      f"({s2l['top1'] / clip:.2f}x)")
    lines += ["", "Acceptance checks on this run: " + "; ".join(checks) + "."]
    return lines


def write_report(out: Path, results: Mapping[str, Mapping[str, Any]], plots: Mapping[str, Path],
                 profile, seed: int, *, elapsed: float) -> Path:
    """Write ``out/report.md`` and return its path."""
    from molphenix.data import load_dataset

    from .runner import ABLATIONS, BASELINES

    ds = load_dataset(out / "data")
    lines: List[str] = ["# molphenix demo report", ""]
    lines.append(f"Written {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
                 f"`molphenix demo` ({profile.name} profile, seed {seed}); this invocation took "
                 f"{elapsed:.0f} s (a resumed run counts only its own part).")
    lines.append("")
    lines.append(f"Data: simulated ({ds.n_wells} wells, {ds.molecules.num_rows} molecules, "
                 f"E = {ds.embedding_dim}, datasets {', '.join(ds.datasets)}). Every learned "
                 f"method saw {profile.samples} training samples with the same heads "
                 "(`molphenix-small`) and the frozen training defaults; the best-validation "
                 "checkpoint is evaluated. Recalls are fractions of queries whose true "
                 "(molecule, concentration) ranks in the top 1% / 5% of the split's candidates; "
                 "brackets are bootstrap 95% intervals over queries.")
    lines.append("")
    lines.append(f"Baselines: {', '.join(BASELINES)}. Ablations of MolPhenix: "
                 f"{', '.join(ABLATIONS)} (no concentration encoding; no inactive undersampling; "
                 "cosine-geometry soft labels: the arctan-L2 labels of the L2-normalised inputs "
                 "(S2L with u_norm=\"unit\"), scaled to the same soft-positive fraction; identity "
                 "labels, i.e. the S2L loss without "
                 "soft labels). `ridge` is a linear anchor (closed-form "
                 "ridge regression from Morgan counts x dose to the control-centered phenotype, "
                 "retrieved by cosine; alpha chosen on validation).")
    grid_file = out / "ridge" / "ridge_grid.json"
    if grid_file.is_file():
        grid = json.loads(grid_file.read_text())
        lines.append("")
        lines.append(f"Ridge: alpha = {grid['chosen_alpha']:g} (lambda = alpha x mean diagonal of the "
                     f"centered Gram matrix) chosen from {{{', '.join(f'{a:g}' for a in grid['alphas'])}}} "
                     f"on the validation split ({grid['selection']}); numbers in `ridge/ridge_grid.json`.")
    lines.append("")
    lines.append("*chance* is k / N, the expected recall of a random ranking (k = max(1, ceil(f N)) "
                 "of the N candidates).")
    for split in _SPLIT_ORDER:
        if not any(split in r for r in results.values()):
            continue
        lines += ["", f"## {SPLIT_TITLES[split]}", ""]
        lines += metrics_table(results, split)
    q = _quality_lines(results)
    if q:
        lines += ["", "## Unseen molecules, active queries: ratios", ""] + q
    if plots:
        lines += ["", "## Figures", ""]
        captions = {"recall_vs_samples": "Validation recall vs samples seen",
                    "per_concentration": "Per-concentration recall (unseen molecules)",
                    "similarity_cdfs": "Cosine vs arctan-L2 similarity CDFs",
                    "projection": "2-D projection of molecule embeddings"}
        for name, path in plots.items():
            rel = Path(path).relative_to(out)
            lines += [f"### {captions.get(name, name)}", "", f"![{name}]({rel.as_posix()})", ""]
    lines += ["", "Per-method metrics: `<method>/metrics.json`; runs: `<method>/run/`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
