"""The simulator against real data: the same screen statistics on the bundled real screen and on
simulations (docs/design/data.md, "The simulator against real data").

Measures :func:`molphenix.data.stats.screen_statistics` on the primary dataset of each (real:
``cell-injury/24``, the 24 h screen; simulator: ``lib_a``, the training library; the second
dataset's numbers are in the JSON too), cross-checks molphenix's activity calls on the real data
against the authors' per-well Mahalanobis distances (when the source files are there), and
writes ``stats.json``, ``table.md`` and ``soft_label_cdfs.png`` (arctan-L2 CDFs by pair kind,
real and simulated side by side) into ``--out``.

Usage:
    OMP_NUM_THREADS=1 python experiments/simulator_vs_real.py --out experiments/results/simulator_vs_real \
        [--seeds 0,1,2] [--molecules 1000] [--sim JSON] [--source /work/shared/data/cell-injury-u2os]
    python experiments/simulator_vs_real.py --out DIR --compare "1.0=DIR1" --compare "1.1=DIR2"

``--sim`` overrides SimulatorConfig fields (e.g. '{"inactive_effect_scale": 0}'). The S2L settings
(soft-positive fraction, inactive rate) are read from the trainer's frozen defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from molphenix.data import call_activity, load_dataset, simulate
from molphenix.data.simulator import SIMULATOR_VERSION, SimulatorConfig
from molphenix.data.stats import PAIR_KINDS, activity_fractions, control_calibration, screen_statistics


def s2l_settings() -> dict:
    """The trainer's S2L soft-label settings (frozen per-loss defaults)."""
    from molphenix.train.config import TUNED_DEFAULTS

    d = TUNED_DEFAULTS["s2l"]
    return {"soft_positive_fraction": d["soft_positive_fraction"], "inactive_rate": d["inactive_rate"]}


def authors_crosscheck(ds, calls, source: Path) -> dict:
    """molphenix calls vs the authors' per-well Mahalanobis distance (Dahlin et al. 2023).

    The source files' ``Mahalanobis distance significant`` column is "No" for every well of this
    subset, so the authors' call is rebuilt from the distance itself: a sample is active when the
    median distance of its wells exceeds the 95th percentile of the DMSO wells' distances of the
    same treatment time.
    """
    import pandas as pd

    frames = []
    for f in ("fs_plate_holdout", "fs_well_holdout", "fs_treatment_holdout"):
        frames.append(pd.read_csv(source / f"{f}.csv.gz", usecols=["Plate", "Well", "Mahalanobis distance",
                                                                    "Mahalanobis distance significant"]))
    raw = pd.concat(frames)
    raw["well_id"] = raw["Plate"] + "/" + raw["Well"]
    w = ds.wells.drop(["phenomic"]).to_pandas().merge(raw, on="well_id", how="left")
    if w["Mahalanobis distance"].isna().any():
        raise ValueError("source: some wells have no Mahalanobis distance")
    sig = w["Mahalanobis distance significant"].astype(str).value_counts().to_dict()
    q95 = w[w.is_control].groupby("dataset")["Mahalanobis distance"].quantile(0.95)
    ctrl_beyond = float((w[w.is_control]["Mahalanobis distance"].values
                         > q95.loc[w[w.is_control].dataset].values).mean())
    t = w[~w.is_control]
    med = t.groupby(["dataset", "molecule_id", "concentration_um"])["Mahalanobis distance"].median().reset_index()
    med["authors_active"] = med["Mahalanobis distance"].values > q95.loc[med.dataset].values
    c = calls.to_pandas()
    j = med.merge(c, on=["molecule_id", "concentration_um"], how="inner")
    ours = j.p_value.values < 0.1
    theirs = j.authors_active.values
    agree = float((ours == theirs).mean())
    pe = ours.mean() * theirs.mean() + (1 - ours.mean()) * (1 - theirs.mean())
    kappa = (agree - pe) / (1 - pe) if pe < 1 else float("nan")
    from scipy.stats import spearmanr

    rho = float(spearmanr(-np.log(j.p_value.values), j["Mahalanobis distance"].values).statistic)
    return {
        "significant_column_values": sig,
        "n_samples": int(len(j)),
        "authors_active_fraction": float(theirs.mean()),
        "molphenix_active_fraction_p01": float(ours.mean()),
        "agreement": agree,
        "cohen_kappa": float(kappa),
        "spearman_neglogp_vs_median_distance": rho,
        "dmso_beyond_q95": ctrl_beyond,
        "by_dataset": {
            str(d): {"authors_active": float(g.authors_active.mean()), "molphenix_active": float((g.p_value < 0.1).mean()),
                     "agreement": float(((g.p_value < 0.1) == g.authors_active).mean()), "n": int(len(g))}
            for d, g in j.groupby("dataset")
        },
    }


def measure(ds, calls, primary: str, other: list[str], s2l: dict, seed: int = 0) -> dict:
    out = {"primary": primary}
    for name in (primary, *other):
        out[name] = screen_statistics(ds, calls, dataset_name=name, seed=seed, **s2l)
        out[name]["calibration"] = control_calibration(ds, dataset_name=name, seed=seed)
    out["activity_all"] = activity_fractions(ds, calls)
    return out


# rows of the table: (label, path in the primary dataset's statistics, format)
ROWS = [
    ("samples / molecules (primary dataset)", lambda s: f"{s['counts']['samples']} / {s['counts']['molecules']}"),
    ("replicate wells per sample, median (single-well share)",
     lambda s: f"{s['counts']['replicates_median']:g} ({s['counts']['single_well_samples']:.0%})"),
    ("active samples, p < 0.1 / 0.05 / 0.01",
     lambda s: " / ".join(f"{s['activity']['samples'][c]:.0%}" for c in ("0.1", "0.05", "0.01"))),
    ("molecules active at any dose / at their top dose (p < 0.1)",
     lambda s: f"{s['activity']['molecules_any_dose']['0.1']:.0%} / {s['activity']['molecules_top_dose']['0.1']:.0%}"),
    ("percent replicating, all / active / inactive samples",
     lambda s: " / ".join(f"{v:.0%}" for v in (s['replicates']['percent_replicating'],
                                              s['replicates']['active']['percent_replicating'],
                                              s['replicates']['inactive']['percent_replicating']))),
    ("replicate correlation, active / inactive (null mean)",
     lambda s: f"{s['replicates']['active']['mean_replicate_corr']:.2f} / "
               f"{s['replicates']['inactive']['mean_replicate_corr']:.2f} ({s['replicates']['null_mean_corr']:.2f})"),
    ("well distance to controls / control spread, median: control / active / inactive",
     lambda s: " / ".join(f"{s['distance'][k]['q50']:.2f}" for k in ("control", "active", "inactive"))),
    ("... 95th percentile: control / active / inactive",
     lambda s: " / ".join(f"{s['distance'][k]['q95']:.2f}" for k in ("control", "active", "inactive"))),
    ("wells beyond the controls' 95th percentile: active / inactive",
     lambda s: f"{s['distance']['beyond_control']['active']:.0%} / {s['distance']['beyond_control']['inactive']:.0%}"),
    ("pair kinds ii / aa / ai (share of pairs)",
     lambda s: " / ".join(f"{s['soft_labels']['pair_share'][k]:.0%}" for k in PAIR_KINDS)),
    ("inside the soft-label window: ii / aa / ai",
     lambda s: " / ".join(f"{s['soft_labels']['window_fraction'][k]:.1%}" for k in PAIR_KINDS)),
    ("median arctan-L2 similarity: ii / aa / ai",
     lambda s: " / ".join(f"{s['soft_labels']['median_similarity'][k]:.2f}" for k in PAIR_KINDS)),
    ("median d² over the ii median: aa / ai",
     lambda s: " / ".join(f"{s['soft_labels']['median_d2_ratio'][k]:.1f}" for k in PAIR_KINDS[1:])),
    ("position share of control variance: address / row / column",
     lambda s: " / ".join(f"{s['position'][k]:.2f}" for k in ("address_controls", "row_controls", "column_controls"))),
    ("control-well correlation, other plate: same / other address",
     lambda s: f"{s['position']['control_corr_same_address']:.2f} / {s['position']['control_corr_other_address']:.2f}"),
    ("replicate well pairs at the same address",
     lambda s: f"{s['position']['replicate_pairs_same_address']:.0%}"),
    ("inactive wells' correlation: replicates / other molecules at the same address",
     lambda s: f"{s['position']['inactive_replicate_corr']:.2f} / {s['position']['inactive_same_address_corr']:.2f}"),
    ("DMSO pseudo-samples (2 wells) called active, p < 0.1: same address / random addresses",
     lambda s: f"{s['calibration']['same_address']['0.1']:.0%} / {s['calibration']['random_address']['0.1']:.0%}"),
    ("plate share of control variance: raw / within batch",
     lambda s: f"{s['variance']['plate_controls']:.3f} / {s['variance']['plate_within_batch_controls']:.3f}"),
    ("batch share of control variance",
     lambda s: f"{s['variance']['batch_controls']:.3f}"),
    ("plate share of all wells' variance", lambda s: f"{s['variance']['plate_all_wells']:.3f}"),
]


# single-number rows for the before/after comparison (docs/design/data.md): (label, extractor, format)
COMPARE = [
    ("active samples, p < 0.1", lambda s: s["activity"]["samples"]["0.1"], "{:.0%}"),
    ("active samples, p < 0.01", lambda s: s["activity"]["samples"]["0.01"], "{:.0%}"),
    ("molecules active at any dose (p < 0.1)", lambda s: s["activity"]["molecules_any_dose"]["0.1"], "{:.0%}"),
    ("percent replicating, all samples", lambda s: s["replicates"]["percent_replicating"], "{:.0%}"),
    ("percent replicating, active samples", lambda s: s["replicates"]["active"]["percent_replicating"], "{:.0%}"),
    ("percent replicating, inactive samples", lambda s: s["replicates"]["inactive"]["percent_replicating"], "{:.0%}"),
    ("replicate correlation, active samples", lambda s: s["replicates"]["active"]["mean_replicate_corr"], "{:.2f}"),
    ("replicate correlation, inactive samples", lambda s: s["replicates"]["inactive"]["mean_replicate_corr"], "{:.2f}"),
    ("replicate correlation, null (random wells)", lambda s: s["replicates"]["null_mean_corr"], "{:.2f}"),
    ("distance to controls / control spread, active wells, median", lambda s: s["distance"]["active"]["q50"], "{:.2f}"),
    ("... 95th percentile", lambda s: s["distance"]["active"]["q95"], "{:.2f}"),
    ("distance to controls / control spread, inactive wells, median", lambda s: s["distance"]["inactive"]["q50"], "{:.2f}"),
    ("active wells beyond the controls' 95th percentile", lambda s: s["distance"]["beyond_control"]["active"], "{:.0%}"),
    ("inactive wells beyond the controls' 95th percentile", lambda s: s["distance"]["beyond_control"]["inactive"], "{:.0%}"),
    ("inactive-inactive pairs inside the soft-label window", lambda s: s["soft_labels"]["window_fraction"]["inactive-inactive"], "{:.1%}"),
    ("active-active pairs inside the window", lambda s: s["soft_labels"]["window_fraction"]["active-active"], "{:.1%}"),
    ("active-inactive pairs inside the window", lambda s: s["soft_labels"]["window_fraction"]["active-inactive"], "{:.1%}"),
    ("share of pairs that are inactive-inactive", lambda s: s["soft_labels"]["pair_share"]["inactive-inactive"], "{:.0%}"),
    ("median s~, inactive-inactive pairs", lambda s: s["soft_labels"]["median_similarity"]["inactive-inactive"], "{:.2f}"),
    ("median s~, active-active pairs", lambda s: s["soft_labels"]["median_similarity"]["active-active"], "{:.2f}"),
    ("median s~, active-inactive pairs", lambda s: s["soft_labels"]["median_similarity"]["active-inactive"], "{:.2f}"),
    ("address share of control variance", lambda s: s["position"]["address_controls"], "{:.2f}"),
    ("control wells, same address of another plate: correlation", lambda s: s["position"]["control_corr_same_address"], "{:.2f}"),
    ("replicate well pairs at the same address", lambda s: s["position"]["replicate_pairs_same_address"], "{:.0%}"),
    ("inactive wells: replicate correlation", lambda s: s["position"]["inactive_replicate_corr"], "{:.2f}"),
    ("inactive wells: other molecules, same address", lambda s: s["position"]["inactive_same_address_corr"], "{:.2f}"),
    ("DMSO 2-well pseudo-samples at one address called active (p < 0.1)", lambda s: s["calibration"]["same_address"]["0.1"], "{:.0%}"),
    ("... at random addresses", lambda s: s["calibration"]["random_address"]["0.1"], "{:.0%}"),
    ("plate share of control variance, raw", lambda s: s["variance"]["plate_controls"], "{:.2f}"),
    ("batch share of control variance, raw", lambda s: s["variance"]["batch_controls"], "{:.2f}"),
    ("plate share of control variance, within batch", lambda s: s["variance"]["plate_within_batch_controls"], "{:.2f}"),
    ("plate share of all wells' variance, raw", lambda s: s["variance"]["plate_all_wells"], "{:.2f}"),
]


def compare_table(runs: list[tuple[str, dict]]) -> str:
    """Real (from the first run) beside each run's simulations (range over seeds)."""
    real = runs[0][1]["real"]
    rp = real[real["primary"]]
    head = "| statistic (primary dataset) | real cell-injury/24 | " + " | ".join(n for n, _ in runs) + " |"
    lines = [head, "|" + "---|" * (2 + len(runs))]
    for label, fn, f in COMPARE:
        cells = []
        for _n, res in runs:
            vals = []
            for sim in res["simulations"]:
                try:
                    vals.append(float(fn(sim[sim["primary"]])))
                except (KeyError, TypeError):
                    pass
            vals = [v for v in vals if math.isfinite(v)]
            lo, hi = (min(vals), max(vals)) if vals else (float("nan"), float("nan"))
            cells.append(f.format(lo) if f.format(lo) == f.format(hi) else f"{f.format(lo)} – {f.format(hi)}")
        try:
            rv = f.format(float(fn(rp)))
        except (KeyError, TypeError):
            rv = "n/a"
        lines.append(f"| {label} | {rv} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(fn, s) -> str:
    try:
        return fn(s)
    except (KeyError, TypeError, ValueError):
        return "n/a"


def table(real: dict, sims: list[dict], seeds: list[int]) -> str:
    head = "| statistic | real (cell-injury/24) | " + " | ".join(f"simulator seed {s}" for s in seeds) + " |"
    lines = [head, "|" + "---|" * (2 + len(seeds))]
    rp = real[real["primary"]]
    for label, fn in ROWS:
        lines.append(f"| {label} | {fmt(fn, rp)} | " + " | ".join(fmt(fn, s[s['primary']]) for s in sims) + " |")
    return "\n".join(lines)


def figure(real: dict, sim: dict, path: Path, sim_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (title, st) in zip(axes, (("real: cell-injury/24 (U2OS Cell Painting)", real[real["primary"]]),
                                       (sim_label, sim[sim["primary"]]))):
        sl = st["soft_labels"]
        g = np.asarray(sl["cdf"]["s"])
        for k, color in zip(PAIR_KINDS, ("tab:blue", "tab:red", "tab:purple")):
            if sl["cdf"][k] is None:
                continue
            ax.plot(g, sl["cdf"][k], color=color,
                    label=f"{k} ({sl['pair_share'][k]:.0%} of pairs; {sl['window_fraction'][k]:.1%} in window)")
        ax.axvline(0.75, color="grey", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("arctan-L2 similarity s~ (S2L soft-label space)")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_xlim(-1, 1)
    axes[0].set_ylabel("CDF over sample pairs")
    fig.suptitle("arctan-L2 similarity by pair kind (window: s~ >= 0.75, dashed)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--molecules", type=int, default=None, help="default: SimulatorConfig().n_molecules")
    ap.add_argument("--sim", default="{}", help="JSON of SimulatorConfig overrides")
    ap.add_argument("--source", default="/work/shared/data/cell-injury-u2os",
                    help="the real data's source files (for the authors' Mahalanobis cross-check; skipped if absent)")
    ap.add_argument("--no-real", action="store_true", help="reuse OUT/stats.json's real numbers")
    ap.add_argument("--label", default=None, help="name of the simulator setting (figure and table)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="only write OUT/compare.md: the real column and each DIR/stats.json's simulations "
                         "(range over seeds), single-number statistics")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.compare:
        runs = [(c.split("=", 1)[0], json.loads((Path(c.split("=", 1)[1]) / "stats.json").read_text()))
                for c in args.compare]
        out.mkdir(parents=True, exist_ok=True)
        tab = compare_table(runs)
        (out / "compare.md").write_text(tab + "\n")
        print(tab)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    overrides = json.loads(args.sim)
    if args.molecules is not None:
        overrides["n_molecules"] = args.molecules
    cfg = SimulatorConfig(**overrides)
    s2l = s2l_settings()
    log = open(out / "run.log", "a")

    def say(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    say(f"argv={sys.argv[1:]} simulator {SIMULATOR_VERSION} config overrides {overrides} s2l {s2l}")
    prev = out / "stats.json"
    if args.no_real and prev.exists():
        real = json.loads(prev.read_text())["real"]
    else:
        t0 = time.perf_counter()
        ds = load_dataset("cell-injury")
        calls = call_activity(ds)
        real = measure(ds, calls, "cell-injury/24", ["cell-injury/48"], s2l)
        src = Path(args.source)
        if (src / "fs_plate_holdout.csv.gz").is_file():
            real["authors_crosscheck"] = authors_crosscheck(ds, calls, src)
            say(f"authors' cross-check: {json.dumps(real['authors_crosscheck'])}")
        else:
            say(f"{src}: source files not found; authors' cross-check skipped")
        say(f"real data measured in {time.perf_counter() - t0:.0f} s")
    sims = []
    for seed in seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="molphenix-simreal-") as tmp:
            ds = simulate(Path(tmp) / "sim", seed=seed, config=cfg, progress=False)
            st = measure(ds, ds.calls, "lib_a", ["lib_b"], s2l)
            j = ds.calls.join(ds.truth.select(["molecule_id", "concentration_um", "effect_norm"]),
                              ["molecule_id", "concentration_um"])
            zero = j.column("effect_norm").to_numpy() == 0
            pz = j.column("p_value").to_numpy()[zero]
            st["zero_effect_called"] = {"n": int(zero.sum()), "0.1": float((pz < 0.1).mean()),
                                        "0.01": float((pz < 0.01).mean())}
            st["simulator"] = {"version": SIMULATOR_VERSION, "seed": seed, "config": cfg.to_dict(),
                               "measured": ds.meta.get("measured"),
                               "activity_calling": ds.meta.get("activity_calling", {}).get("evaluation")}
        sims.append(st)
        say(f"simulator seed {seed} measured in {time.perf_counter() - t0:.0f} s")
    res = {"real": real, "simulations": sims, "s2l": s2l, "simulator_version": SIMULATOR_VERSION,
           "overrides": overrides, "label": args.label}
    (out / "stats.json").write_text(json.dumps(res, indent=1, sort_keys=True, default=float) + "\n")
    tab = table(real, sims, seeds)
    (out / "table.md").write_text(tab + "\n")
    say("\n" + tab)
    label = args.label or f"simulator {SIMULATOR_VERSION}"
    figure(real, sims[0], out / "soft_label_cdfs.png", f"{label}, seed {seeds[0]} (lib_a)")
    say(f"wrote {out}/stats.json, table.md, soft_label_cdfs.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
