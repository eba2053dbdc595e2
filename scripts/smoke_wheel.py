"""Smoke test of an installed molphenix wheel in a fresh virtual environment *without torch*.

Checks that the compiled module imports with no libtorch and no CUDA runtime, that it links
neither, and that its kernels give the right answers on numpy arrays (numpy float64 oracle
written here, independent of the package's torch reference).

    python scripts/smoke_wheel.py
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np


def main() -> int:
    try:
        import torch  # noqa: F401

        print("note: torch is importable in this environment; the test still checks _C alone")
    except ImportError:
        print("torch is not installed here: good, _C must not need it")
    import molphenix
    import molphenix._C as C

    info = C.build_info()
    print("molphenix", molphenix.__version__, info)
    assert info["cpu_kernels"], info
    ldd = subprocess.run(["ldd", C.__file__], capture_output=True, text=True).stdout
    print(ldd)
    for lib in ("libtorch", "libc10", "libcudart", "libcuda.so", "libpython"):
        assert lib not in ldd, f"_C links {lib}:\n{ldd}"

    rng = np.random.default_rng(0)
    b, d, e = 37, 19, 11
    p = rng.standard_normal((b, d)).astype(np.float64)
    q = rng.standard_normal((b, d)).astype(np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    u = rng.standard_normal((b, e)) * 0.05
    t, bias, c, thr, gamma, delta = 10.0, -10.0, 0.3, 0.75, 1.75, 0.75
    stats = np.zeros(3)
    gp, gq = np.zeros_like(p), np.zeros_like(q)
    C.s2l_loss_fwd(p, q, u, u, stats, gp, gq, None, scale=t, bias=bias, c=c, has_threshold=True,
                   threshold=thr, gamma=gamma, delta=delta, hard_diagonal=False, diag_offset=0,
                   normalizer=float(b), compute_grad=True, deterministic=True, num_threads=2, stream=0)
    # numpy oracle
    z = t * p @ q.T + bias
    d2 = np.maximum((u * u).sum(1)[:, None] + (u * u).sum(1)[None, :] - 2 * u @ u.T, 0)
    s = 1 - (4 / math.pi) * np.arctan(d2 / c)
    s = np.where(s >= thr, s, 0.0)
    np.fill_diagonal(s, 1.0)
    wp, wn = s, gamma - delta * s
    softplus = np.logaddexp(0, z)
    loss = ((wp + wn) * softplus - wp * z).sum() / b
    g = ((wp + wn) / (1 + np.exp(-z)) - wp) / b
    assert abs(stats[0] - loss) <= 1e-9 * max(1, abs(loss)), (stats[0], loss)
    assert np.allclose(gp, t * g @ q, rtol=1e-9, atol=1e-11)
    assert np.allclose(gq, t * g.T @ p, rtol=1e-9, atol=1e-11)
    assert abs(stats[1] - (g * (p @ q.T)).sum()) < 1e-9 and abs(stats[2] - g.sum()) < 1e-9

    cand = rng.standard_normal((101, 8)).astype(np.float32)
    qu = (cand[:40] + 0.3 * rng.standard_normal((40, 8))).astype(np.float32)
    tg = np.arange(40, dtype=np.int64)
    ts = np.zeros(40)
    ranks = np.zeros(40, dtype=np.int64)
    C.retrieval_ranks(qu, cand, tg, ts, ranks, None, metric=0, num_threads=2, stream=0)
    sc = qu.astype(np.float64) @ cand.T.astype(np.float64)
    expect = (sc >= sc[np.arange(40), tg][:, None]).sum(1) - 1
    assert (ranks == expect).all(), (ranks, expect)
    try:
        C.retrieval_ranks(qu, cand, tg.astype(np.float64), ts, ranks, None, metric=0,
                          num_threads=2, stream=0)
    except TypeError as exc:
        assert "targets" in str(exc)
    else:
        raise AssertionError("float targets were accepted")
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
