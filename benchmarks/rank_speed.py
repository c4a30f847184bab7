"""Speed of ``evaluate_rank`` on a random Market-sized problem (3,368 x 15,913 by default).

Times the default counting kernel against the plain sorting method in the same run and checks
that both give the same figures. Usage: python benchmarks/rank_speed.py [--queries Q]
[--gallery G] [--pids P] [--cams C] [--repeats R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from magnifier.evaluation import evaluate_rank


def random_problem(q: int, g: int, num_pids: int, num_cams: int, seed: int = 0):
    """Distances from random 64-d features clustered by identity, so matches rank high but not always first."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_pids, 64)).astype(np.float32)
    g_pids = np.concatenate([np.arange(num_pids), rng.integers(0, num_pids, g - num_pids)])
    q_pids = rng.integers(0, num_pids, q)
    qf = centres[q_pids] + 1.5 * rng.normal(size=(q, 64)).astype(np.float32)
    gf = centres[g_pids] + 1.5 * rng.normal(size=(g, 64)).astype(np.float32)
    dist = (qf**2).sum(1)[:, None] + (gf**2).sum(1)[None] - 2 * qf @ gf.T
    return dist, q_pids, g_pids, rng.integers(0, num_cams, q), rng.integers(0, num_cams, g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=3368)
    p.add_argument("--gallery", type=int, default=15913)
    p.add_argument("--pids", type=int, default=751)
    p.add_argument("--cams", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    problem = random_problem(args.queries, args.gallery, args.pids, args.cams)
    results, times = {}, {}
    for method in ("count", "sort"):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results[method] = evaluate_rank(*problem, method=method)
            best = min(best, time.perf_counter() - t0)
        times[method] = best
    a, b = results["count"], results["sort"]
    same = np.allclose(a["cmc"], b["cmc"], atol=1e-12) and abs(a["mAP"] - b["mAP"]) < 1e-9 and abs(a["mINP"] - b["mINP"]) < 1e-9
    print(f"{args.queries} x {args.gallery}, {args.pids} ids, {args.cams} cameras, float32 distances, best of {args.repeats}")
    print(f"  counting kernel (default) {times['count']:.3f} s")
    print(f"  sort per row              {times['sort']:.3f} s   ({times['sort'] / times['count']:.1f}x slower)")
    print(f"  identical results: {same}   mAP {100 * a['mAP']:.2f}  rank-1 {100 * a['cmc'][0]:.2f}")


if __name__ == "__main__":
    main()
