"""Grouped k-fold cross-validation of retrieval methods (``molphenix cv``).

Protocol:

* **Folds.** The primary dataset's molecules are grouped by Bemis-Murcko scaffold (the groups of
  the unseen-molecule split) and the groups are dealt into K folds of near-equal molecule counts
  (:func:`molphenix.data.fold_assignment`, seeded by ``split_seed``). Fold k is the
  ``unseen_molecules`` test set of the runs of fold k, so every molecule is tested exactly once.
* **Training and validation inside a fold.** Each (method, fold) is one run directory trained by
  :func:`molphenix.train.fit` (the ridge baseline by :func:`molphenix.baselines.fit_ridge_run`)
  with ``folds=K, fold=k``: the training molecules are the other K - 1 folds minus a validation set of whole scaffold groups (``val_fraction`` of all molecules,
  drawn from those folds with a stream of (``split_seed``, k)) that picks the ``best`` checkpoint;
  replicate wells of training molecules are held out as ``unseen_wells`` as in any run. Every
  method of a fold gets the same split. Every fold of a method gets the same settings (those of
  the method plus the shared ones; the training budget too).
* **Evaluation.** Each fold's run is evaluated by :func:`molphenix.train.evaluate_run`
  (``RUN/metrics.json``, ``RUN/ranks.parquet``); the ``unseen_molecules`` ranks of the K folds
  are pooled per query (each fold ranks its queries among its own candidates, so N may differ
  slightly between folds) and the pooled metrics carry cluster-bootstrap intervals over molecules
  (:func:`molphenix.eval.compare.summarize`). Methods are compared against a reference on the
  same queries (:func:`molphenix.eval.compare.paired_compare`).

Layout of ``out``::

    cv.json                  the settings (dataset fingerprint, folds, split_seed, methods and
                             their fields, the shared training fields, match, checkpoint)
    folds.parquet            molecule_id, scaffold, fold
    <method>/fold-<k>/       the run directory (+ metrics.json, ranks.parquet, cv_fold.json:
                             the fold is finished, with its timings)
    <method>/ranks.parquet   the pooled unseen-molecule queries: fold, molecule, concentration,
                             active, target, rank, n_candidates
    results.json             pooled metrics per method, per-fold metrics, paired comparisons
    report.md                the same as tables
    results-<checkpoint>.json, report-<checkpoint>.md
                             the same, kept per checkpoint evaluated (best, last)

Resumable: rerunning the same command skips finished folds and resumes an interrupted run from
its last checkpoint; more methods may be added on a rerun; a rerun with the other
``checkpoint`` re-evaluates the trained folds without training again; other settings are
refused (named).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["DEFAULT_METHODS", "CVResult", "method_configs", "run_cv"]

#: Methods of ``molphenix cv`` without ``--methods``: the learned losses and the ridge baseline.
DEFAULT_METHODS = ("s2l", "clip", "siglip", "cloome", "ridge")

CV_FILE = "cv.json"
FOLDS_FILE = "folds.parquet"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
FOLD_FILE = "cv_fold.json"
SPLIT = "unseen_molecules"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Fields the cross-validation sets itself (a method or the shared settings may not).
_OWN = ("data", "out", "folds", "fold", "split_seed", "overwrite")
#: Shared fields a ridge run takes (besides the featurizer, when it is one ridge can use).
_RIDGE_SHARED = ("p_cutoff", "val_fraction", "unseen_wells_fraction")
#: Fields that change where and how a run executes, not what it computes.
_RUNTIME = ("threads", "device", "progress", "checkpoint_every", "dist_timeout")

MethodSpec = Union[Sequence[str], Mapping[str, Optional[Mapping[str, Any]]], None]


@dataclass
class CVResult:
    """What :func:`run_cv` returns.

    Attributes:
        out: The cross-validation directory.
        results: The content of ``results.json``.
        report: Path of ``report.md``.
    """

    out: Path
    results: Dict[str, Any]
    report: Path


def _method_fields(methods: MethodSpec) -> Dict[str, Dict[str, Any]]:
    from molphenix.losses import LOSSES

    if methods is None:
        methods = DEFAULT_METHODS
    items = list(methods.items()) if isinstance(methods, Mapping) else [(m, None) for m in methods]
    out: Dict[str, Dict[str, Any]] = {}
    for name, fields in items:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"methods: {name!r} is not a usable method name (letters, digits, '.', '_', '-')")
        if name in out:
            raise ValueError(f"methods: {name!r} is given twice")
        if fields is None:
            if name != "ridge" and name not in LOSSES:
                raise ValueError(f"methods: unknown method {name!r}; expected a loss ({', '.join(LOSSES)}) "
                                 "or ridge")
            fields = {"loss": name}
        if not isinstance(fields, Mapping):
            raise ValueError(f"methods: the fields of {name!r} must be a mapping of TrainConfig fields")
        own = sorted(set(fields) & set(_OWN))
        if own:
            raise ValueError(f"methods: {name!r} sets {own[0]!r}, which the cross-validation sets itself")
        out[name] = json.loads(json.dumps(dict(fields)))
    if not out:
        raise ValueError("methods: no method given")
    return out


def _shared_mol_input(shared: Dict[str, Any]) -> str:
    from molphenix.nn import get_model_config

    if shared.get("mol_input"):
        return str(shared["mol_input"])
    return get_model_config(shared.get("model", "molphenix-small"), **shared.get("model_overrides", {})).mol_input


def method_configs(data: Union[str, Path], out: Union[str, Path], methods: MethodSpec = None, *,
                   folds: int = 5, split_seed: int = 0, train: Optional[Mapping[str, Any]] = None
                   ) -> Dict[str, List[Any]]:
    """The :class:`~molphenix.train.TrainConfig` of every (method, fold) of a cross-validation.

    A learned method's config is the shared ``train`` fields, then the method's own fields, then
    ``data``, ``out = OUT/<method>/fold-<k>``, ``split_seed``, ``folds`` and ``fold``. The ridge
    baseline (``loss="ridge"``) takes of the shared fields only the split and activity fields
    (``val_fraction``, ``unseen_wells_fraction``, ``p_cutoff``), the runtime ones, and the
    molecular input with its featurizer arguments when that input is one it can use
    (:data:`molphenix.baselines.RIDGE_MOL_INPUTS`: a feature matrix; otherwise Morgan with defaults).

    Args:
        data: Dataset directory.
        out: The cross-validation directory.
        methods: Method names (a loss name or ``"ridge"``: ``{"loss": name}``), or a mapping
            name -> TrainConfig fields (e.g. an ablation). Default :data:`DEFAULT_METHODS`.
        folds: K >= 2.
        split_seed: Seed of the fold partition and of each fold's validation draw.
        train: Shared TrainConfig fields (every method; e.g. ``samples``, ``seed``, ``threads``).

    Returns:
        ``{method: [config of fold 0, ..., fold K-1]}``, validated.

    Raises:
        ValueError: an unknown method, a bad name, a field the cross-validation sets itself, or
            an invalid field value (the field named, as TrainConfig names it).
    """
    from molphenix.train import TrainConfig
    from molphenix.baselines import RIDGE_MOL_INPUTS

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    specs = _method_fields(methods)
    shared = json.loads(json.dumps(dict(train or {})))
    own = sorted(set(shared) & set(_OWN))
    if own:
        raise ValueError(f"{own[0]}: set by the cross-validation itself (the folds' data, directories and splits)")
    out = Path(out)
    configs: Dict[str, List[Any]] = {}
    for name, fields in specs.items():
        loss = fields.get("loss", shared.get("loss", "s2l"))
        if loss == "ridge":
            base = {k: shared[k] for k in _RIDGE_SHARED + _RUNTIME if k in shared}
            base.pop("device", None)  # the closed-form fit runs on the CPU
            mol_input = _shared_mol_input(shared)
            if mol_input in RIDGE_MOL_INPUTS:
                base["mol_input"] = mol_input
                if shared.get("featurizer_kwargs"):
                    base["featurizer_kwargs"] = shared["featurizer_kwargs"]
        else:
            base = dict(shared)
        per = []
        for k in range(folds):
            per.append(TrainConfig.from_dict({**base, **fields, "data": str(data), "out": str(out / name / f"fold-{k}"),
                                              "split_seed": int(split_seed), "folds": int(folds), "fold": k}))
        configs[name] = per
    return configs


def _identity(cfg: Any) -> Dict[str, Any]:
    d = cfg.identity()
    d.pop("fold", None)
    return d


def _open_cv(out: Path, settings: Dict[str, Any], overwrite: bool) -> Dict[str, Any]:
    """Create or check ``out/cv.json``; returns the settings in force (methods merged)."""
    path = out / CV_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not path.is_file():
        raise ValueError(f"out: {out} is not empty and holds no cross-validation ({CV_FILE}); choose another directory")
    if overwrite and path.is_file():
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    from molphenix.eval.io import atomic_write_bytes

    if path.is_file():
        old = json.loads(path.read_text())
        # the checkpoint evaluated changes no training: a rerun with the other one re-evaluates
        # the finished folds (results.json / report.md then hold it; both are also kept per checkpoint)
        diff = sorted(k for k in set(old) | set(settings)
                      if k not in ("methods", "checkpoint") and old.get(k) != settings.get(k))
        if diff:
            desc = "; ".join(f"{k}: {settings.get(k)!r} now vs {old.get(k)!r} there" for k in diff)
            raise ValueError(f"out: {out} holds a cross-validation with other settings ({desc}); use another "
                             "--out, or --overwrite to start over")
        for name, spec in settings["methods"].items():
            if name in old["methods"] and old["methods"][name] != spec:
                a, b = spec, old["methods"][name]
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise ValueError(f"out: {out} holds method {name!r} with other settings "
                                 f"({', '.join(f'{k}: {a.get(k)!r} now vs {b.get(k)!r} there' for k in keys)}); "
                                 "use another method name or --out, or --overwrite to start over")
        merged = dict(old)
        merged["checkpoint"] = settings["checkpoint"]
        merged["methods"] = {**old["methods"], **settings["methods"]}
        settings = merged
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
    return settings


def _fold_done(run: Path, match: str, checkpoint: str) -> Optional[Dict[str, Any]]:
    p = run / FOLD_FILE
    if not (p.is_file() and (run / "metrics.json").is_file() and (run / "ranks.parquet").is_file()):
        return None
    rec = json.loads(p.read_text())
    if rec.get("match") != match or rec.get("checkpoint") != checkpoint:
        return None
    return rec


def _fmt_num(v: Any, nd: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{nd}f}"


def run_cv(data: Union[str, Path], out: Union[str, Path], methods: MethodSpec = None, *, folds: int = 5,
           split_seed: int = 0, train: Optional[Mapping[str, Any]] = None, match: str = "pair",
           checkpoint: str = "best", fractions: Sequence[float] = (0.01, 0.05), n_bootstrap: int = 2000,
           seed: int = 0, reference: Optional[str] = None, overwrite: bool = False,
           log: Optional[Callable[[str], None]] = print) -> CVResult:
    """Run (or resume) a grouped k-fold cross-validation and write its pooled results.

    Args:
        data: Dataset directory.
        out: The cross-validation directory (layout in the module docstring).
        methods: See :func:`method_configs` (default :data:`DEFAULT_METHODS`).
        folds: K >= 2 (at most the number of scaffold groups).
        split_seed: Seed of the fold partition (and of each fold's validation draw).
        train: Shared TrainConfig fields (:func:`method_configs`).
        match: ``"pair"`` or ``"molecule"`` (:func:`molphenix.train.evaluate_run`).
        checkpoint: ``"best"`` (validation) or ``"last"``.
        fractions: top-K% fractions of the metrics.
        n_bootstrap: Cluster-bootstrap resamples of the pooled intervals and comparisons (>= 1;
            the per-fold ``metrics.json`` use query resamples, up to 1000).
        seed: Bootstrap seed.
        reference: The method every other one is compared with (default: the first).
        overwrite: Delete a cross-validation in ``out`` and start over.
        log: Receives one line per step (``None``: silent).

    Returns:
        :class:`CVResult`.

    Raises:
        ValueError: invalid settings (the field named); ``out`` holds something else or a
            cross-validation with other settings; more folds than scaffold groups.
    """
    from molphenix.data import load_dataset
    from molphenix.data.splits import fold_assignment, scaffolds
    from molphenix.eval.metrics import MATCHES
    from molphenix.train import dataset_fingerprint

    say = log if log is not None else (lambda s: None)
    if match not in MATCHES:
        raise ValueError(f"match: expected one of {list(MATCHES)}, got {match!r}")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint: expected 'best' or 'last', got {checkpoint!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap: expected an integer >= 1, got {n_bootstrap!r}")
    out, data = Path(out), Path(data)
    configs = method_configs(data, out, methods, folds=folds, split_seed=split_seed, train=train)
    names = list(configs)
    ref = reference if reference is not None else names[0]
    if ref not in configs:
        raise ValueError(f"reference: {ref!r} is not one of the methods ({', '.join(names)})")
    t_start = time.perf_counter()
    ds = load_dataset(data)
    fp = dataset_fingerprint(ds)
    assignment = fold_assignment(ds, folds, seed=split_seed)
    settings = {
        "dataset_sha256": fp["sha256"],
        "folds": int(folds),
        "split_seed": int(split_seed),
        "match": match,
        "checkpoint": checkpoint,
        "methods": {n: _identity(c[0]) for n, c in configs.items()},
    }
    settings = _open_cv(out, settings, overwrite)
    smiles_of = ds.smiles_of()
    mols = sorted(assignment)
    scafs = scaffolds([smiles_of[m] for m in mols])
    _write_folds(out / FOLDS_FILE, mols, scafs, [assignment[m] for m in mols])
    sizes = np.bincount([assignment[m] for m in mols], minlength=folds)
    n_scaf = len(set(scafs))
    say(f"grouped {folds}-fold cross-validation: {len(mols)} molecules in {n_scaf} scaffold groups "
        f"({'/'.join(str(int(s)) for s in sizes)} molecules per fold), methods {', '.join(names)} -> {out}")

    total, i = len(names) * folds, 0
    for k in range(folds):
        for name in names:
            i += 1
            cfg = configs[name][k]
            _run_fold(cfg, data, match, checkpoint, min(n_bootstrap, 1000), seed, f"[{i}/{total}] {name} fold {k}", say)

    results = _results(out, data, names, configs, folds, assignment, match, checkpoint, fractions, n_bootstrap,
                       seed, ref, settings)
    results["wall_s"] = time.perf_counter() - t_start
    from molphenix.eval.io import atomic_write_bytes, write_metrics

    write_metrics(out / RESULTS_FILE, results)  # the metrics.json writer: atomic, NaN-free JSON
    write_metrics(out / f"results-{checkpoint}.json", results)
    from .report import cv_markdown

    report = out / REPORT_FILE
    atomic_write_bytes(report, cv_markdown(results).encode())
    atomic_write_bytes(out / f"report-{checkpoint}.md", cv_markdown(results).encode())
    say(f"pooled results: {out / RESULTS_FILE}, report: {report}")
    return CVResult(out=out, results=results, report=report)


def _write_folds(path: Path, mols: List[str], scafs: List[str], fold: List[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from molphenix.eval.io import atomic_write

    t = pa.table({"molecule_id": pa.array(mols, pa.string()), "scaffold": pa.array(scafs, pa.string()),
                  "fold": pa.array(fold, pa.int32())})
    atomic_write(path, lambda f: pq.write_table(t, f))


def _run_fold(cfg: Any, data: Path, match: str, checkpoint: str, n_bootstrap: int, seed: int, tag: str,
              say: Callable[[str], None]) -> Dict[str, Any]:
    from molphenix.baselines import fit_ridge_run
    from molphenix.eval.io import atomic_write_bytes
    from molphenix.train import evaluate_run, fit

    run = Path(cfg.out)
    rec = _fold_done(run, match, checkpoint)
    if rec is not None:
        say(f"{tag}: done earlier")
        return rec
    say(f"{tag}: {'fitting the ridge baseline' if cfg.loss == 'ridge' else f'training ({cfg.loss})'} -> {run}")
    t0 = time.perf_counter()
    (fit_ridge_run if cfg.loss == "ridge" else fit)(cfg, log=lambda msg: say(f"    {msg}"))
    t1 = time.perf_counter()
    metrics = evaluate_run(run, data, match=match, checkpoint=checkpoint, n_bootstrap=n_bootstrap, seed=seed)
    t2 = time.perf_counter()
    meta = json.loads((run / "run.json").read_text())
    m = metrics.get(SPLIT, {})
    rec = {"match": match, "checkpoint": checkpoint, "fit_wall_s": t1 - t0, "eval_wall_s": t2 - t1,
           "n_candidates": m.get("n_candidates"), "n_queries": (m.get("all") or {}).get("n_queries"),
           "batch_size": meta.get("batch_size"), "total_steps": meta.get("total_steps")}
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        from molphenix.train.checkpoint import load_checkpoint

        ck = load_checkpoint(last)
        rec.update(samples_seen=int(ck.get("samples_seen", 0)), train_elapsed_s=float(ck.get("elapsed_s", 0.0)),
                   best_step=ck.get("best_step"), steps=int(ck.get("step", 0)))
    atomic_write_bytes(run / FOLD_FILE, (json.dumps(rec, indent=2) + "\n").encode())
    a = m.get("all") or {}
    say(f"{tag}: fit {t1 - t0:.1f} s, evaluated {t2 - t1:.1f} s; {SPLIT}: {a.get('n_queries')} queries, "
        f"{m.get('n_candidates')} candidates, MRR {_fmt_num(a.get('mrr'))} (chance {_fmt_num(a.get('chance_mrr'))}), "
        f"top-1 {a.get('hits', {}).get('rank1')}/{a.get('n_queries')}")
    return rec


def _pooled_ranks(out: Path, name: str, folds: int, assignment: Dict[str, int]) -> Dict[str, np.ndarray]:
    from molphenix.eval import read_metrics, read_query_ranks, write_query_ranks

    parts: List[Dict[str, np.ndarray]] = []
    seen: Dict[str, int] = {}
    for k in range(folds):
        run = out / name / f"fold-{k}"
        n_cand = int(read_metrics(run / "metrics.json")[SPLIT]["n_candidates"])
        r = read_query_ranks(run / "ranks.parquet")
        sel = np.asarray(r["split"]) == SPLIT
        part = {c: np.asarray(v)[sel] for c, v in r.items() if c != "split"}
        q = int(sel.sum())
        tested = set(part["molecule"].astype(str).tolist())
        expected = {m for m, f in assignment.items() if f == k}
        if tested != expected:
            odd = sorted(tested ^ expected)[:3]
            raise RuntimeError(f"{run}: the molecules tested are not fold {k} of {FOLDS_FILE} (e.g. {odd}); "
                               "the run was made with other folds")
        for m in tested:
            if m in seen:
                raise RuntimeError(f"molecule {m!r} is tested in folds {seen[m]} and {k}")
            seen[m] = k
        part = {"fold": np.full(q, k, dtype=np.int64), **part, "n_candidates": np.full(q, n_cand, dtype=np.int64)}
        parts.append(part)
    pooled = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    missing = sorted(set(assignment) - set(seen))
    if missing:
        raise RuntimeError(f"molecules never tested: {missing[:3]}")
    write_query_ranks(out / name / "ranks.parquet", pooled)
    return pooled


def _fold_headline(run: Path) -> Dict[str, Any]:
    from molphenix.eval import read_metrics

    m = read_metrics(run / "metrics.json")
    rec = json.loads((run / FOLD_FILE).read_text())
    keys = ("n_queries", "mrr", "chance_mrr", "rank1", "chance_rank1", "top1", "top5", "mean_rank")
    splits = {}
    for s, v in m.items():
        if not isinstance(v, dict) or "all" not in v:
            continue
        splits[s] = {"n_candidates": v["n_candidates"],
                     **{g: {k: v[g].get(k) for k in keys} for g in ("all", "active")}}
    return {**rec, "splits": splits}


def _results(out: Path, data: Path, names: List[str], configs: Dict[str, List[Any]], folds: int,
             assignment: Dict[str, int], match: str, checkpoint: str, fractions: Sequence[float],
             n_bootstrap: int, seed: int, ref: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    from molphenix.eval.compare import paired_compare, summarize

    tables = {n: _pooled_ranks(out, n, folds, assignment) for n in names}
    methods: Dict[str, Any] = {}
    for n in names:
        t = tables[n]
        pooled = {sub: summarize(t["rank"], t["n_candidates"], t["molecule"].astype(str), active=t["active"].astype(bool),
                                 subset=sub, fractions=fractions, n_bootstrap=n_bootstrap, seed=seed)
                  for sub in ("all", "active")}
        methods[n] = {"config": settings["methods"][n], "pooled": pooled,
                      "per_fold": [{"fold": k, **_fold_headline(out / n / f"fold-{k}")} for k in range(folds)]}
    comparisons = []
    for n in names:
        if n == ref:
            continue
        for sub in ("all", "active"):
            a = {**tables[ref], "active": tables[ref]["active"].astype(bool)}
            if sub == "active" and not a["active"].any():
                continue
            comparisons.append(paired_compare(a, tables[n], subset=sub, fractions=fractions,
                                              n_bootstrap=n_bootstrap, seed=seed, names=(ref, n)))
    t0 = tables[names[0]]
    n_cand = [int(t0["n_candidates"][t0["fold"] == k][0]) for k in range(folds)]
    n_q = [int((t0["fold"] == k).sum()) for k in range(folds)]
    n_mol = [int(sum(1 for f in assignment.values() if f == k)) for k in range(folds)]
    return {
        "schema_version": 1,
        "kind": "grouped_cv",
        "data": str(data),
        "dataset_sha256": settings["dataset_sha256"],
        "folds": folds,
        "split_seed": settings["split_seed"],
        "split": SPLIT,
        "match": match,
        "checkpoint": checkpoint,
        "fractions": list(fractions),
        "n_bootstrap": n_bootstrap,
        "bootstrap": "cluster bootstrap over molecules (all queries of a drawn molecule together), percentile 95%",
        "seed": seed,
        "fold_sizes": [{"fold": k, "n_molecules": n_mol[k], "n_queries": n_q[k], "n_candidates": n_cand[k]}
                       for k in range(folds)],
        "reference": ref,
        "methods": methods,
        "comparisons": comparisons,
    }
