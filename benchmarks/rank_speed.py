"""Speed and memory of the ranking metrics on a random Market-sized problem (3,368 x 15,913).

In one process: the default counting kernel of ``evaluate_rank``, its sort-based method, a
straightforward per-query numpy loop (the style of the evaluation code in common use: one
stable sort per query row, then cumulative sums) and a full-sort vectorised numpy version (one
``argsort`` of the whole matrix), all on the same float32 distance matrix, with a check that
the figures agree. ``--features`` adds ``evaluate_features`` (embeddings in, distances
streamed) on an MSMT17-sized problem and reports its peak memory.

Usage: python benchmarks/rank_speed.py [--queries Q] [--gallery G] [--repeats R]
       [--skip-loop] [--features [--dim D]]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from magnifier.evaluation import evaluate_features, evaluate_rank


def random_problem(q: int, g: int, num_pids: int, num_cams: int, seed: int = 0, dim: int = 64):
    """Random features clustered by identity (matches rank high, not always first) and ids.

    The clusters live in 64 dimensions; a wider ``dim`` embeds them with a random linear map, so
    the difficulty does not change with the width (and float32 throughout keeps memory low).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_pids, 64), dtype=np.float32)
    g_pids = np.concatenate([np.arange(num_pids), rng.integers(0, num_pids, g - num_pids)])
    q_pids = rng.integers(0, num_pids, q)
    qf = centres[q_pids] + 1.5 * rng.standard_normal((q, 64), dtype=np.float32)
    gf = centres[g_pids] + 1.5 * rng.standard_normal((g, 64), dtype=np.float32)
    if dim != 64:
        lift = rng.standard_normal((64, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
        qf, gf = qf @ lift, gf @ lift
    return qf, gf, q_pids, g_pids, rng.integers(0, num_cams, q), rng.integers(0, num_cams, g)


def per_query_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """One query at a time: sort the row, drop same id + camera, cumulative sums."""
    cmc_sum, aps, inps = np.zeros(max_rank), [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        keep = ~(same_pid & (g_camids[order] == q_camids[i]))
        matches = same_pid[keep]
        if not matches.any():
            continue
        ranks = np.flatnonzero(matches) + 1
        hits = np.cumsum(matches)
        aps.append((hits[matches] / ranks).mean())
        inps.append(len(ranks) / ranks[-1])
        cmc = np.minimum(hits[:max_rank], 1)
        cmc_sum[: len(cmc)] += cmc
        cmc_sum[len(cmc):] += cmc[-1]
    return {"cmc": cmc_sum / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def full_sort(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """One argsort of the whole matrix, then vectorised cumulative sums over all rows."""
    order = np.argsort(distmat, axis=1, kind="stable")
    same_pid = g_pids[order] == q_pids[:, None]
    valid = ~(same_pid & (g_camids[order] == q_camids[:, None]))
    match = same_pid & valid
    keep = match.any(axis=1)
    match, valid = match[keep], valid[keep]
    valid_rank = np.cumsum(valid, axis=1)
    hits = np.cumsum(match, axis=1)
    m = hits[:, -1]
    ap = np.where(match, hits / np.maximum(valid_rank, 1), 0).sum(axis=1) / m
    last = np.where(match, valid_rank, 0).max(axis=1)
    first = valid_rank[np.arange(len(m)), np.argmax(match, axis=1)]
    cmc = (first[:, None] <= np.arange(1, max_rank + 1)[None]).mean(axis=0)
    return {"cmc": cmc, "mAP": float(ap.mean()), "mINP": float((m / last).mean())}


def best_time(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def same(a, b) -> bool:
    return (np.allclose(a["cmc"], b["cmc"], atol=1e-9) and abs(a["mAP"] - b["mAP"]) < 1e-9
            and abs(a["mINP"] - b["mINP"]) < 1e-9)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=3368)
    p.add_argument("--gallery", type=int, default=15913)
    p.add_argument("--pids", type=int, default=751)
    p.add_argument("--cams", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-loop", action="store_true", help="skip the slow per-query loop")
    p.add_argument("--features", action="store_true",
                   help="also evaluate_features on an MSMT17-sized problem (11,659 x 82,161)")
    p.add_argument("--dim", type=int, default=4096, help="feature width for --features")
    args = p.parse_args()
    qf, gf, *ids = random_problem(args.queries, args.gallery, args.pids, args.cams)
    dist = (qf**2).sum(1)[:, None] + (gf**2).sum(1)[None] - 2 * qf @ gf.T
    print(f"{args.queries} x {args.gallery}, {args.pids} ids, {args.cams} cameras, float32 "
          f"distances, best of {args.repeats}")
    t_count, ref = best_time(lambda: evaluate_rank(dist, *ids), args.repeats)
    rows = [("evaluate_rank, counting kernel (default)", t_count, ref)]
    rows.append(("evaluate_rank, method=sort", *best_time(
        lambda: evaluate_rank(dist, *ids, method="sort"), args.repeats)))
    rows.append(("numpy, full sort vectorised", *best_time(lambda: full_sort(dist, *ids), 1)))
    if not args.skip_loop:
        rows.append(("numpy, per-query loop", *best_time(lambda: per_query_loop(dist, *ids), 1)))
    for name, t, result in rows:
        print(f"  {name:42s} {t:7.3f} s  {t / t_count:6.1f}x   same figures: {same(result, ref)}")
    print(f"  mAP {100 * ref['mAP']:.2f}  rank-1 {100 * ref['cmc'][0]:.2f}")

    if args.features:
        del dist, qf, gf
        q, g = 11659, 82161
        qf, gf, *ids = random_problem(q, g, 1041, 15, seed=1, dim=args.dim)
        qf /= np.linalg.norm(qf, axis=1, keepdims=True)
        gf /= np.linalg.norm(gf, axis=1, keepdims=True)
        inputs = (qf.nbytes + gf.nbytes) / 2**30
        before = peak_rss_gb()
        t0 = time.perf_counter()
        result = evaluate_features(qf, gf, *ids)
        t = time.perf_counter() - t0
        print(f"evaluate_features {q} x {g}, {args.dim}-d: {t:.1f} s, peak RSS "
              f"{peak_rss_gb():.2f} GB (inputs {inputs:.2f} GB; peak before the call "
              f"{before:.2f} GB; a dense float32 matrix alone would be {q * g * 4 / 2**30:.1f} GB)"
              f"  mAP {100 * result['mAP']:.2f}")


if __name__ == "__main__":
    main()
