"""Text of a cross-validation's results: ``report.md`` and the terminal summary."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

__all__ = ["comparison_table", "cv_markdown", "cv_summary", "fold_table", "notes", "pooled_table"]


def _f(v: Optional[float], nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def _ci(ci: Optional[List[Optional[float]]], nd: int = 3) -> str:
    if not ci or ci[0] is None and ci[1] is None:
        return ""
    lo = "-inf" if ci[0] is None else f"{ci[0]:.{nd}f}"
    hi = "inf" if ci[1] is None else f"{ci[1]:.{nd}f}"
    return f" [{lo}, {hi}]"


def _sd(v: Optional[float], nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:+.{nd}f}"


def _k_label(key: str, g: Mapping[str, Any]) -> str:
    pct = key[len("top"):]
    ks = (g.get("k") or {}).get(key)
    if not ks:
        return f"top-{pct}%"
    k = f"k = {ks[0]}" if ks[0] == ks[1] else f"k = {ks[0]}-{ks[1]}"
    same = " = top-1" if key in (g.get("same_as_rank1") or []) else ""
    return f"top-{pct}% ({k}{same})"


def pooled_table(results: Mapping[str, Any], subset: str) -> List[str]:
    """Markdown lines of the pooled metrics of every method for ``subset`` (``"all"`` or
    ``"active"``): MRR, top-1 as hits / queries, each top-K% with its k and its hits, mean rank,
    all with 95% intervals, and the chance row (expected hits and rates)."""
    methods = results["methods"]
    first = next(iter(methods.values()))["pooled"][subset]
    if not first["n_queries"]:
        return [f"No {subset} queries."]
    fkeys = list(first["k"])
    head = ["method", "MRR", "top-1 (hits / queries)"] + [_k_label(k, first) for k in fkeys] + ["mean rank"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in methods.items():
        g = m["pooled"][subset]
        cells = [name, _f(g["mrr"]) + _ci(g["ci95"]["mrr"]),
                 f"{g['hits']['rank1']} / {g['n_queries']}: {_f(g['rank1'])}{_ci(g['ci95']['rank1'])}"]
        for k in fkeys:
            cells.append(f"{g['hits'][k]}: {_f(g[k])}{_ci(g['ci95'][k])}")
        cells.append(_f(g["mean_rank"], 2) + _ci(g["ci95"]["mean_rank"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    ch = first["chance"]
    hc = first["hits_chance"]
    cells = ["*chance*", _f(ch["mrr"]), f"{hc['rank1']:.1f} / {first['n_queries']}: {_f(ch['rank1'])}"]
    cells += [f"{hc[k]:.1f}: {_f(ch[k])}" for k in fkeys]
    cells.append(_f(ch["mean_rank"], 2))
    lines.append("| " + " | ".join(f"*{c}*" if i else c for i, c in enumerate(cells)) + " |")
    return lines


def comparison_table(results: Mapping[str, Any], subset: str) -> List[str]:
    """Markdown lines of the paired comparisons against the reference for ``subset`` (A - B of
    every metric and A / B of the first, with 95% intervals); empty when there are none."""
    rows = [c for c in results["comparisons"] if c["subset"] == subset]
    if not rows:
        return []
    metrics = list(rows[0]["metrics"])
    head = ["A vs B", "queries (molecules)"] + [f"{m} A - B" for m in metrics] + [f"{metrics[0]} A / B"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        cells = [f"{c['a']} vs {c['b']}", f"{c['n_queries']} ({c['n_clusters']})"]
        for m in metrics:
            d = c["metrics"][m]
            nd = 2 if m == "mean_rank" else 3
            cells.append(_sd(d["diff"], nd) + _ci(d["diff_ci95"], nd))
        d0 = c["metrics"][metrics[0]]
        cells.append(_f(d0["ratio"], 2) + _ci(d0["ratio_ci95"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fold_table(results: Mapping[str, Any]) -> List[str]:
    """Markdown lines of the per-fold unseen-molecule MRR of every method, with each fold's
    fit + evaluation wall time and the folds' sizes."""
    folds = results["folds"]
    head = ["method"] + [f"fold {k}" for k in range(folds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sizes = results["fold_sizes"]
    lines.append("| *molecules / queries / candidates* | " + " | ".join(
        f"*{s['n_molecules']} / {s['n_queries']} / {s['n_candidates']}*" for s in sizes) + " |")
    for name, m in results["methods"].items():
        cells = [name]
        for f in m["per_fold"]:
            a = f["splits"].get(results["split"], {}).get("all", {})
            wall = (f.get("fit_wall_s") or 0.0) + (f.get("eval_wall_s") or 0.0)
            cells.append(f"{_f(a.get('mrr'))} ({wall:.0f} s)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def notes(results: Mapping[str, Any]) -> List[str]:
    """Bullet lines that explain the tables: when top-K% is top-1, what the intervals and the
    paired comparisons resample."""
    first = next(iter(results["methods"].values()))["pooled"]["all"]
    out = []
    for key in first.get("same_as_rank1") or []:
        out.append(f"- top-{key[3:]}% of {', '.join(sorted({str(s['n_candidates']) for s in results['fold_sizes']}))} "
                   "candidates is k = 1: the true candidate ranked first, the same as top-1.")
    out.append("- Intervals: 95% cluster bootstrap over molecules (the queries of a molecule at all its "
               f"concentrations resampled together; {results['n_bootstrap']} resamples). They reflect which "
               "molecules were screened, not training randomness (rerun with another seed for that).")
    out.append("- Paired comparisons resample the same molecules for both methods; A - B and A / B, "
               "a lower mean rank is better.")
    return out


def cv_markdown(results: Mapping[str, Any]) -> str:
    """``report.md`` of a cross-validation (tables of :func:`molphenix.experiment.run_cv`'s
    results: pooled metrics with chance, paired comparisons, per-fold MRR and wall time)."""
    sizes = results["fold_sizes"]
    n_q = sum(s["n_queries"] for s in sizes)
    n_m = sum(s["n_molecules"] for s in sizes)
    lines = [
        "# Grouped cross-validation",
        "",
        f"{results['folds']} folds of whole scaffold groups (split seed {results['split_seed']}); every molecule "
        f"tested once: {n_m} molecules, {n_q} (molecule, concentration) queries of the {results['split']} split, "
        f"match `{results['match']}`, checkpoint `{results['checkpoint']}`. Each fold ranks its queries among its "
        "own candidates; ranks are pooled over the folds.",
        "",
        "## Pooled, all queries",
        "",
        *pooled_table(results, "all"),
        "",
        "## Pooled, active queries",
        "",
        *pooled_table(results, "active"),
        "",
    ]
    for subset in ("all", "active"):
        t = comparison_table(results, subset)
        if t:
            lines += [f"## Paired comparisons against {results['reference']}, {subset} queries", "", *t, ""]
    lines += ["## Per fold: unseen-molecule MRR (fit + evaluation wall time)", "", *fold_table(results), "",
              "## Notes", "", *notes(results), ""]
    return "\n".join(lines)


def cv_summary(results: Mapping[str, Any]) -> str:
    """The terminal summary: the pooled table (all queries), the comparisons and the notes."""
    lines = ["pooled over folds, all queries:", *pooled_table(results, "all")]
    t = comparison_table(results, "all")
    if t:
        lines += ["", f"paired against {results['reference']} (all queries):", *t]
    lines += ["", *notes(results)]
    return "\n".join(lines)
