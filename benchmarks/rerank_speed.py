"""Time and peak memory of k-reciprocal re-ranking on a random Market-1501-sized problem.

In one run, on the same inputs: the reference (the dense, item-by-item port of the authors'
code in ``tests/test_rerank.py``, vectorised as the published code is), ``re_ranking`` given the
three Euclidean distance matrices and ``re_ranking_features`` given the embeddings: their run
times, peak memory, the mAP of their rankings and the largest differences between their
outputs. The inputs are 3,368 queries and 15,913 gallery images with L2-normalised embeddings
(2,048-d by default) clustered by identity: 751 identities with a few images each at various
noise levels, plus distractors (see :func:`make_features`).

Each path runs in a fresh process (multiprocessing "spawn") that loads its inputs, resets its
peak resident set size (``/proc/self/clear_refs``) and reads it again (``VmHWM``) after the
call: memory is reported beyond the loaded inputs, and beyond the returned (Q, G) matrix.

``re_ranking_features`` computes its own distances, which differ from the matrices' in the last
bits: items at distances equal to about 1e-7 (relative) can swap places in a neighbour list,
which changes the re-ranked distances of the queries around them (hence rows that differ by
more than 1e-5 between the two paths, while ``re_ranking`` and the reference agree to 1e-6).

``--msmt`` runs only ``re_ranking_features`` at MSMT17 size (11,659 x 82,161; 1,041 ids).
``--repeats R`` runs ``re_ranking`` and ``re_ranking_features`` R times each (fresh processes)
and shows the fastest run, for machines shared with other work.

Usage: python benchmarks/rerank_speed.py [--skip-reference] [--msmt] [--dim D] [--repeats R]
       [--queries Q] [--gallery G] [--ids I] [--noise N] [--latent L] [--k1 K1] [--k2 K2]
       [--lambda-value L]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from magnifier.evaluation import euclidean_distance, evaluate_features, evaluate_rank
from magnifier.evaluation.rerank import re_ranking, re_ranking_features

ROOT = Path(__file__).resolve().parents[1]
GB = float(1 << 30)
NAMES = {"reference": "reference (dense)", "matrices": "re_ranking",
         "features": "re_ranking_features"}


def _status_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GB
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_features(q: int, g: int, ids: int, dim: int, noise: float = 1.5, latent: int = 64,
                  seed: int = 0):
    """L2-normalised float32 embeddings clustered by identity.

    Every identity has a centre in a ``latent``-d space and each image a noise level drawn in
    ``[noise / 2, noise]``; a random linear map lifts them to ``dim`` dimensions (real
    embeddings are far from isotropic: clusters in 2048 random dimensions would be trivially
    apart). The queries use the identities at random; the gallery holds every identity, then
    random ones, plus 15% distractors (images of nobody, with ids -1, -2, ...).

    Returns:
        ``qf``, ``gf``, ``q_ids``, ``g_ids``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, latent), dtype=np.float32)
    lift = rng.standard_normal((latent, dim), dtype=np.float32)
    distractors = min(g - ids, int(0.15 * g))
    q_ids = rng.integers(0, ids, q)
    g_ids = np.concatenate([np.arange(ids), rng.integers(0, ids, g - ids - distractors)])

    def images(pids):
        level = rng.uniform(noise / 2, noise, (len(pids), 1)).astype(np.float32)
        return centres[pids] + level * rng.standard_normal((len(pids), latent), dtype=np.float32)

    qf = images(q_ids) @ lift
    gf = np.concatenate([images(g_ids), 2 * rng.standard_normal((distractors, latent),
                                                                dtype=np.float32)]) @ lift
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    return qf, gf, q_ids, np.concatenate([g_ids, -1 - np.arange(distractors)])


def _worker(path: str, folder: str, params: dict, queue) -> None:

    d = Path(folder)
    if path == "features":
        fn, names = re_ranking_features, ("qf", "gf")
    else:
        names = ("qg", "qq", "gg")
        if path == "reference":
            sys.path.insert(0, str(ROOT))
            from tests.test_rerank import reference_re_ranking as fn
        else:
            fn = re_ranking
    inputs = [np.load(d / f"{name}.npy") for name in names]
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS
        f.write("5")
    base = _status_gb("VmRSS")
    start = time.perf_counter()
    out = fn(*inputs, **params)
    seconds = time.perf_counter() - start
    peak = _status_gb("VmHWM") - base
    np.save(d / f"{path}.npy", out)
    queue.put((seconds, peak, out.nbytes / GB, sum(x.nbytes for x in inputs) / GB))


def run_path(path: str, folder: str, params: dict) -> tuple[float, float, float, float]:
    """(seconds, peak RSS growth GB, returned matrix GB, inputs GB) of one path, in a fresh
    process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(path, folder, params, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-reference", action="store_true", help="skip the dense reference")
    parser.add_argument("--msmt", action="store_true",
                        help="only re_ranking_features at MSMT17 size (11,659 x 82,161)")
    parser.add_argument("--dim", type=int, default=2048, help="width of the embeddings")
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--ids", type=int, default=751, help="identities")
    parser.add_argument("--noise", type=float, default=1.5,
                        help="largest noise level of an image (harder neighbourhoods above)")
    parser.add_argument("--latent", type=int, default=64,
                        help="dimension of the identity clusters before the lift to --dim")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of the fast paths; the fastest is shown (the reference: 1)")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    args = parser.parse_args()
    if args.msmt:
        args.queries, args.gallery, args.ids = 11659, 82161, 1041
        paths = ["features"]
    else:
        paths = ["matrices", "features"] if args.skip_reference else [
            "reference", "matrices", "features"]
    params = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)

    with tempfile.TemporaryDirectory() as folder:
        qf, gf, q_ids, g_ids = make_features(args.queries, args.gallery, args.ids, args.dim,
                                             args.noise, args.latent)
        np.save(Path(folder) / "qf.npy", qf)
        np.save(Path(folder) / "gf.npy", gf)
        cams = np.zeros(len(q_ids), dtype=int), np.ones(len(g_ids), dtype=int)  # no junk
        tq, tg = torch.from_numpy(qf), torch.from_numpy(gf)
        if args.msmt:
            plain = evaluate_features(tq, tg, q_ids, g_ids, *cams)["mAP"]
        else:
            for name, (a, b) in {"qg": (tq, tg), "qq": (tq, tq), "gg": (tg, tg)}.items():
                np.save(Path(folder) / f"{name}.npy", euclidean_distance(a, b).numpy())
            plain = evaluate_rank(np.load(Path(folder) / "qg.npy"), q_ids, g_ids, *cams)["mAP"]
        del qf, gf, tq, tg
        print(f"re-ranking {args.queries} x {args.gallery} ({args.ids} ids, {args.dim}-d "
              f"features), k1={args.k1} k2={args.k2} lambda={args.lambda_value}; mAP of the "
              f"plain Euclidean ranking {plain:.3f}", flush=True)
        seconds, outs = {}, {}
        for path in paths:
            runs = [run_path(path, folder, params)
                    for _ in range(1 if path == "reference" else args.repeats)]
            seconds[path], peak, out_gb, in_gb = min(runs)
            outs[path] = np.load(Path(folder) / f"{path}.npy")
            reranked = evaluate_rank(outs[path], q_ids, g_ids, *cams)["mAP"]
            print(f"  {NAMES[path]:20s} {seconds[path]:7.2f} s   peak RSS +{peak:.2f} GB: "
                  f"{peak - out_gb:.2f} GB beyond its {out_gb:.2f} GB result (inputs "
                  f"{in_gb:.2f} GB); mAP {reranked:.3f}", flush=True)
        for a, b in (("reference", "matrices"), ("reference", "features"),
                     ("matrices", "features")):
            if a in outs and b in outs:
                diff = np.abs(outs[a] - outs[b])
                print(f"  {NAMES[b]} vs {NAMES[a]}: speed-up {seconds[a] / seconds[b]:.1f}x, "
                      f"max |difference| {diff.max():.1e}, "
                      f"{int((diff > 1e-5).any(axis=1).sum())} rows differ by more than 1e-5")

if __name__ == "__main__":
    main()
