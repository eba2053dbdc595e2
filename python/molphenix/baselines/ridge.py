"""The ridge anchor: closed-form ridge regression from molecule + dose to phenotype.

Not a contrastive model. For every training (molecule, concentration) pair it regresses the
control-centred, replicate-averaged phenomic embedding ``y`` [E] on a design vector built from
the molecular features ``f`` [F] (the training featurizer, Morgan counts by default) and the
dose::

    phi(m, c) = [ f,  f * e_1(c), ..., f * e_K(c),  e(c),  log10(c) ]

where ``e(c)`` is the one-hot of ``c`` over the training dose set (a dose outside the set takes
its nearest dose in log10 space). The ``f * e_k`` blocks let each dose have its own
structure -> phenotype map on top of a shared one (a linear model without them could only shift
every molecule by the same dose vector). Features and targets are centred (an unpenalised
intercept); the penalty is ``lambda * ||W||^2`` with ``lambda = alpha * tr(K) / n`` (``K`` the
centred Gram matrix of the n training pairs), so ``alpha`` is scale-free.

Retrieval: a phenomic query (control-centred, replicate-averaged) is compared by cosine with the
predicted phenotype ``y_hat(m, c)`` of every candidate; :class:`RidgeModel` exposes
``embed_wells`` / ``embed_molecules`` like a trained run, so the same evaluation applies.

Solve: float64 throughout, in the dual form (one Cholesky of the n x n ``K + lambda I`` per grid
point, ``torch.linalg``); the block structure of ``phi`` makes ``K`` cheap:
``K = (F F^T) * (1 + E E^T) + E E^T + l l^T`` without ever forming ``phi``. ``alpha`` is
chosen on the ``val`` split (mean of active top-1% and top-5% recall; ties: the larger alpha).
The primal weights ``W = phi_c^T A`` are formed block by block for the saved model.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from molphenix.eval.queries import split_queries
from molphenix.nn.ridge import RidgeModel, RidgeShape, dose_onehot

from ._splits import centered_wells, evaluate_split_embeddings

_dose_onehot = dose_onehot  # the name this module's tests and callers used

__all__ = ["RidgeConfig", "RidgeModel", "RidgeResult", "RidgeShape", "fit_ridge", "solve_ridge_dual",
           "DEFAULT_ALPHAS", "EVAL_SPLITS"]

#: The alpha grid (lambda = alpha * tr(K) / n), chosen on the validation split.
DEFAULT_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
#: Splits written to metrics.json (those the data can form; as molphenix.train.evaluate_run).
EVAL_SPLITS = ("val", "unseen_wells", "unseen_molecules", "unseen_dataset")
GRID_FILE = "ridge_grid.json"
METRICS_FILE = "metrics.json"


@dataclass
class RidgeConfig:
    """Settings of :func:`fit_ridge`.

    Attributes:
        featurizer: Molecular featurizer name for :func:`molphenix.data.featurize.get_featurizer`
            (``"morgan"`` default, ``"maccs"``, ``"rdkit2d"``: its statistics are fitted on the
            training molecules).
        featurizer_kwargs: Its constructor arguments.
        alphas: Grid of relative penalties (``lambda = alpha * tr(K) / n``).
        p_cutoff: Activity cutoff (``p < cutoff`` is active) for the evaluation's active queries.
        split_seed: Seed of :func:`molphenix.data.make_splits` when no split is given.
        n_bootstrap: Bootstrap resamples for the 95% intervals of the reported metrics.
        seed: Bootstrap seed.
    """

    featurizer: str = "morgan"
    featurizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    alphas: Tuple[float, ...] = DEFAULT_ALPHAS
    p_cutoff: float = 0.1
    split_seed: int = 0
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        self.alphas = tuple(float(a) for a in self.alphas)
        if not self.alphas or any(not (a > 0 and math.isfinite(a)) for a in self.alphas):
            raise ValueError(f"alphas: expected positive finite numbers, got {self.alphas!r}")
        if not 0 < self.p_cutoff <= 1:
            raise ValueError(f"p_cutoff: must lie in (0, 1], got {self.p_cutoff!r}")


# ---------------------------------------------------------------------------------------------
# the design
# ---------------------------------------------------------------------------------------------


def _gram(f1: torch.Tensor, e1: torch.Tensor, l1: torch.Tensor,
          f2: torch.Tensor, e2: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """<phi_i, phi_j> for the block design, without forming phi. All float64.

    Shapes:
        f1 [n, F], e1 [n, K], l1 [n]; f2 [m, F], e2 [m, K], l2 [m] -> [n, m]
    """
    ee = e1 @ e2.T
    return (f1 @ f2.T) * (1.0 + ee) + ee + l1[:, None] * l2[None, :]


def solve_ridge_dual(K: torch.Tensor, Y: torch.Tensor, lambdas: Sequence[float]) -> List[torch.Tensor]:
    """Dual ridge coefficients ``A = (K + lambda I)^-1 Y`` for each lambda (one Cholesky each:
    on CPU a Cholesky factorisation is an order of magnitude faster than one ``eigh``).

    Args:
        K: [n, n] symmetric positive semi-definite Gram matrix (float64).
        Y: [n, E] targets (float64).
        lambdas: penalties (> 0).

    Returns:
        One [n, E] tensor per lambda.
    """
    eye = torch.eye(K.shape[0], dtype=K.dtype)
    out = []
    for lam in lambdas:
        L, info = torch.linalg.cholesky_ex(K + float(lam) * eye)
        if int(info) == 0:
            out.append(torch.cholesky_solve(Y, L))
        else:  # numerically indefinite (tiny lambda on a rank-deficient K): LU solve
            out.append(torch.linalg.solve(K + float(lam) * eye, Y))
    return out


@dataclass
class RidgeResult:
    """What :func:`fit_ridge` returns.

    Attributes:
        model: The fitted :class:`RidgeModel` (at the chosen alpha).
        metrics: ``{split: split_metrics}`` in the metrics.json layout.
        grid: Validation numbers per alpha (``[{"alpha", "lambda", "val": {...}}]``) and the choice.
        out: Directory written (or None).
    """

    model: RidgeModel
    metrics: Dict[str, Any]
    grid: Dict[str, Any]
    out: Optional[Path] = None


def _pair_features(smiles_of: Dict[str, str], molecules: Sequence[str], featurizer) -> np.ndarray:
    from molphenix.data.featurize import featurize

    uniq = sorted(set(molecules))
    fx = featurize([smiles_of[m] for m in uniq], featurizer)
    pos = {m: i for i, m in enumerate(uniq)}
    return fx[[pos[m] for m in molecules]]


def _val_score(m: Dict[str, Any]) -> Tuple[float, float]:
    act = m["active"]
    if act["n_queries"]:
        return (0.5 * (act["top1"] + act["top5"]), m["all"]["top5"])
    return (m["all"]["top5"], m["all"]["top1"])


def fit_ridge(dataset, splits=None, *, config: Optional[RidgeConfig] = None,
              out: str | os.PathLike | None = None, calls=None, log=None) -> RidgeResult:
    """Fit the ridge anchor on the training split, choose alpha on ``val``, evaluate every split.

    Args:
        dataset: A :class:`molphenix.data.Dataset`.
        splits: Its :class:`molphenix.data.Splits` (default: ``make_splits(dataset,
            seed=config.split_seed)``, the same default a training run uses).
        config: :class:`RidgeConfig` (defaults otherwise).
        out: Directory for ``ridge.pt``, ``ridge_config.json``, ``ridge_grid.json`` and
            ``metrics.json`` (None: write nothing).
        calls: Activity calls (default: ``dataset.calls``, computed when absent).
        log: Optional callable taking one progress line.

    Returns:
        :class:`RidgeResult`.

    Raises:
        ValueError: an empty training split, a batch without controls, invalid SMILES.
    """
    from molphenix.data import call_activity, make_splits
    from molphenix.data.featurize import RDKitDescriptors, get_featurizer

    cfg = config or RidgeConfig()
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    if splits is None:
        splits = make_splits(dataset, seed=cfg.split_seed)
    if calls is None:
        calls = dataset.calls if dataset.calls is not None else call_activity(dataset)
    centered = centered_wells(dataset)
    train = split_queries(dataset, splits.indices("train"), calls, p_cutoff=cfg.p_cutoff, centered=centered)
    if train is None:
        raise ValueError("the training split is empty: nothing to fit the ridge anchor on")
    smiles_of = dataset.smiles_of()
    fz = get_featurizer(cfg.featurizer, **cfg.featurizer_kwargs)
    stats = None
    if isinstance(fz, RDKitDescriptors):
        fz.fit(sorted({smiles_of[m] for m in train["molecule"]}))
        stats = {"mean": np.asarray(fz.mean_).tolist(), "std": np.asarray(fz.std_).tolist()}
    doses = np.unique(np.asarray(train["concentration"], dtype=np.float64))

    def design(q) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        f = _pair_features(smiles_of, list(q["molecule"]), fz)
        e = dose_onehot(q["concentration"], doses)
        return (torch.as_tensor(f, dtype=torch.float64), torch.as_tensor(e, dtype=torch.float64),
                torch.as_tensor(np.log10(q["concentration"]), dtype=torch.float64), f)

    F_tr, E_tr, L_tr, _ = design(train)
    n = F_tr.shape[0]
    Y = torch.as_tensor(train["x"], dtype=torch.float64)
    y_mean = Y.mean(0)
    K = _gram(F_tr, E_tr, L_tr, F_tr, E_tr, L_tr)
    row_mean = K.mean(0)  # [n]
    all_mean = row_mean.mean()
    Kc = K - row_mean[None, :] - row_mean[:, None] + all_mean
    Kc = 0.5 * (Kc + Kc.T)
    scale = float(torch.diagonal(Kc).mean()) if n else 1.0
    scale = scale if scale > 0 else 1.0
    lambdas = [a * scale for a in cfg.alphas]
    A_all = solve_ridge_dual(Kc, Y - y_mean, lambdas)
    say(f"ridge: {n} training pairs, {F_tr.shape[1]} features x {len(doses)} doses; "
        f"solved the grid in {time.perf_counter() - t0:.1f} s")

    def centred_cross(q) -> Tuple[torch.Tensor, Dict[str, np.ndarray]]:
        Fq, Eq, Lq, _ = design(q)
        Kq = _gram(Fq, Eq, Lq, F_tr, E_tr, L_tr)
        return Kq - Kq.mean(1, keepdim=True) - row_mean[None, :] + all_mean, q

    grid: Dict[str, Any] = {"alphas": list(cfg.alphas), "lambda_scale": scale, "selection":
                            "val: mean of active top-1% and top-5% recall (all top-5% when no "
                            "active queries); ties: the larger alpha", "entries": []}
    val = split_queries(dataset, splits.indices("val"), calls, p_cutoff=cfg.p_cutoff, centered=centered)
    best = len(cfg.alphas) - 1
    if val is not None:
        Kv, _ = centred_cross(val)
        qv = torch.nn.functional.normalize(torch.as_tensor(val["x"], dtype=torch.float32), dim=1)
        best_score = None
        for i, (a, lam, A) in enumerate(zip(cfg.alphas, lambdas, A_all)):
            pred = (Kv @ A + y_mean).float()
            m = evaluate_split_embeddings(qv, torch.nn.functional.normalize(pred, dim=1), val,
                                          n_bootstrap=0)
            score = _val_score(m)
            grid["entries"].append({"alpha": a, "lambda": lam, "val": {
                g: {k: m[g][k] for k in ("top1", "top5", "n_queries")} for g in ("all", "active")}})
            if best_score is None or score >= best_score:
                best, best_score = i, score
    else:
        grid["note"] = "no validation split: the largest alpha is used"
    grid["chosen_alpha"] = cfg.alphas[best]
    A = A_all[best]
    say(f"ridge: alpha={cfg.alphas[best]:g} chosen on val ({len(grid['entries'])} grid points)")

    # primal weights, block by block: W_block = phi_block^T A - mean(phi_block)^T (1^T A)
    colsum = A.sum(0)  # [E]
    w_f = F_tr.T @ A - F_tr.mean(0)[:, None] * colsum[None, :]
    w_fd = torch.stack([F_tr.T @ (E_tr[:, k:k + 1] * A) - (F_tr * E_tr[:, k:k + 1]).mean(0)[:, None] * colsum[None, :]
                        for k in range(E_tr.shape[1])]) if E_tr.shape[1] else torch.zeros(0, F_tr.shape[1], Y.shape[1], dtype=torch.float64)
    w_e = E_tr.T @ A - E_tr.mean(0)[:, None] * colsum[None, :]
    w_l = L_tr @ A - L_tr.mean() * colsum
    # bias = y_mean - mean(phi) . W  (phi-mean dotted blockwise)
    bias = y_mean - F_tr.mean(0) @ w_f - E_tr.mean(0) @ w_e - L_tr.mean() * w_l
    for k in range(E_tr.shape[1]):
        bias = bias - (F_tr * E_tr[:, k:k + 1]).mean(0) @ w_fd[k]
    model = RidgeModel(w_f, w_fd, w_e, w_l, bias, doses.tolist(), featurizer=cfg.featurizer,
                       featurizer_kwargs=cfg.featurizer_kwargs, featurizer_stats=stats,
                       alpha=cfg.alphas[best], lam=lambdas[best])

    metrics: Dict[str, Any] = {}
    for name in EVAL_SPLITS:
        q = split_queries(dataset, splits.indices(name), calls, p_cutoff=cfg.p_cutoff, centered=centered)
        if q is None:
            continue
        _, _, _, fq = design(q)
        cand = torch.nn.functional.normalize(model.predict(fq, q["concentration"]), dim=1)
        metrics[name] = evaluate_split_embeddings(model.embed_wells(q["x"]), cand, q,
                                                  n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    say(f"ridge: evaluated {', '.join(metrics)} in {time.perf_counter() - t0:.1f} s total")
    out_path = None
    if out is not None:
        out_path = Path(out)
        model.save(out_path)
        (out_path / GRID_FILE).write_text(json.dumps(grid, indent=2) + "\n")
        cfg_d = asdict(cfg)
        cfg_d["alphas"] = list(cfg.alphas)
        (out_path / "ridge_fit.json").write_text(json.dumps(cfg_d, indent=2) + "\n")
        from molphenix.eval import write_metrics

        write_metrics(out_path / METRICS_FILE, metrics)
    return RidgeResult(model=model, metrics=metrics, grid=grid, out=out_path)
