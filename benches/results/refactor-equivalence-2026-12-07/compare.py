"""Compare two equivalence output trees (before/after the refactor) and print the verdict per item.

usage: compare.py BEFORE AFTER
Checks, for every training run directory found in both (a dir with checkpoints/last.pt):
  * every tensor of checkpoints/last.pt and best.pt (model, loss, optimizer state, torch RNG) bitwise
    equal (torch.equal, same dtype and shape), and the scalar fields (step, epoch, batch,
    samples_seen, best_metric, best_step, finished, config_hash);
  * run.json (the fitted scales, model config) and split.parquet equal;
  * train_log.csv: the same steps, and the columns step, epoch, batch, samples_seen, loss, lr,
    t, b, grad_norm, val_recall, world_size equal as text; soft_pos_frac equal wherever the
    new log has it (it is logged every STATS_EVERY steps now); samples_per_s and elapsed_s are
    wall-clock and not compared;
  * metrics.json (evaluate) equal.
And every */metrics.json of a demo directory equal (parsed JSON), plus the simulated dataset's
files (wells/molecules/calls parquet) byte-equal.
"""
import csv, filecmp, json, sys
from pathlib import Path

import torch

EXACT = ("step", "epoch", "batch", "samples_seen", "loss", "lr", "t", "b", "grad_norm", "val_recall", "world_size")


def tensors_equal(a, b, path=""):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if ok else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        out = []
        for k in a:
            out += tensors_equal(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += tensors_equal(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def _expected_config_change(ja, jb):
    """The one intended change: the demo's cosine-label ablation was loss_kwargs
    {"unit_u": true, "unit_scale": s} (a patched-in UnitS2LLoss) and is now the S2L option
    {"u_norm": "unit", "unit_scale": s}; everything else must be equal."""
    ka, kb = dict(ja.get("loss_kwargs", {})), dict(jb.get("loss_kwargs", {}))
    if ka.pop("unit_u", None) is not True or kb.pop("u_norm", None) != "unit" or ka != kb:
        return False
    return {k: v for k, v in ja.items() if k != "loss_kwargs"} == {k: v for k, v in jb.items() if k != "loss_kwargs"}


def compare_run(a: Path, b: Path, say):
    bad = 0
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    for c in (ca, cb):
        c.pop("out", None), c.pop("data", None)
    renamed = ca != cb and _expected_config_change(ca, cb)
    for ck in ("last.pt", "best.pt"):
        A = torch.load(a / "checkpoints" / ck, weights_only=True)
        B = torch.load(b / "checkpoints" / ck, weights_only=True)
        A.pop("elapsed_s", None), B.pop("elapsed_s", None)
        # numpy's legacy global generator and Python's random are seeded from OS entropy when a
        # process starts (molphenix draws from neither; the checkpoint keeps them for resumes):
        # they differ between any two processes, so only torch's RNG state is compared
        for ck_ in (A, B):
            ck_["rng"] = {"torch": ck_["rng"]["torch"], "cuda": ck_["rng"]["cuda"]}
        if renamed:  # the config's hash follows the renamed option (checked below)
            A.pop("config_hash"), B.pop("config_hash")
        diffs = tensors_equal(A, B)
        n = sum(1 for _ in _iter_tensors(A))
        say(f"  checkpoints/{ck}: {n} tensors + scalars: " + ("bitwise equal" if not diffs else f"DIFFER {diffs[:5]}"))
        bad += bool(diffs)
    same = json.loads((a / "run.json").read_text()) == json.loads((b / "run.json").read_text())
    say("  run.json: " + ("equal" if same else "DIFFER"))
    bad += not same
    if renamed:
        say(f"  config.json: equal but for the renamed option, as intended: loss_kwargs {ca['loss_kwargs']} "
            f"-> {cb['loss_kwargs']} (config_hash follows it)")
    else:
        say("  config.json: " + ("equal" if ca == cb else f"DIFFER: {sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))}"))
        bad += ca != cb
    import pyarrow.parquet as pq
    same = pq.read_table(a / "split.parquet").equals(pq.read_table(b / "split.parquet"))
    say(f"  split.parquet: " + ("equal" if same else "DIFFER"))
    bad += not same
    ra = list(csv.DictReader(open(a / "train_log.csv")))
    rb = list(csv.DictReader(open(b / "train_log.csv")))
    ok = len(ra) == len(rb)
    nfrac = 0
    for x, y in zip(ra, rb):
        for c in EXACT:
            if x[c] != y[c]:
                ok = False
                say(f"    train_log step {x['step']} {c}: {x[c]} vs {y[c]}")
                break
        if y["soft_pos_frac"] != "":
            nfrac += 1
            if x["soft_pos_frac"] != y["soft_pos_frac"]:
                ok = False
                say(f"    train_log step {x['step']} soft_pos_frac: {x['soft_pos_frac']} vs {y['soft_pos_frac']}")
    say(f"  train_log.csv: {len(ra)} vs {len(rb)} rows; columns {', '.join(EXACT)} "
        + ("equal" if ok else "DIFFER") + f"; soft_pos_frac equal on the {nfrac} rows the new log has it"
        f" (before: {sum(1 for x in ra if x['soft_pos_frac'] != '')} rows)")
    bad += not ok
    if (a / "metrics.json").is_file() or (b / "metrics.json").is_file():
        same = json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
        say(f"  metrics.json: " + ("equal" if same else "DIFFER"))
        bad += not same
    return bad


def _iter_tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _iter_tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _iter_tensors(v)


def main():
    A, B = Path(sys.argv[1]), Path(sys.argv[2])
    say = print
    bad = 0
    runs = sorted(p.parent.parent.relative_to(A) for p in A.rglob("checkpoints/last.pt"))
    for r in runs:
        if not (B / r / "checkpoints" / "last.pt").is_file():
            say(f"{r}: MISSING in {B}")
            bad += 1
            continue
        say(f"{r}:")
        bad += compare_run(A / r, B / r, say)
    for m in sorted(A.rglob("demo/*/metrics.json")):
        r = m.relative_to(A)
        same = (B / r).is_file() and json.loads(m.read_text()) == json.loads((B / r).read_text())
        say(f"{r}: " + ("equal" if same else "DIFFER"))
        bad += not same
    for sim in sorted(set(p.parent for p in A.rglob("wells.parquet"))):
        r = sim.relative_to(A)
        for f in ("wells.parquet", "molecules.parquet", "calls.parquet"):
            if (sim / f).is_file():
                same = (B / r / f).is_file() and filecmp.cmp(sim / f, B / r / f, shallow=False)
                say(f"{r}/{f}: " + ("byte-equal" if same else "DIFFER"))
                bad += not same
    say("VERDICT: " + ("everything equal" if not bad else f"{bad} difference(s)"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
