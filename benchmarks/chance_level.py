"""Chance level of a dataset's query/gallery split: the metrics of random distances.

The yardstick for "clearly above chance" in the README. Usage:
    python benchmarks/chance_level.py [--dataset synthetic] [--root data] [--draws 20]
"""

from __future__ import annotations

import argparse

import numpy as np

from magnifier.data import load_dataset
from magnifier.evaluation import evaluate_rank


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default="data")
    p.add_argument("--draws", type=int, default=20)
    args = p.parse_args()
    data = load_dataset(args.dataset, args.root)
    q_pids = np.array([r.pid for r in data.query])
    g_pids = np.array([r.pid for r in data.gallery])
    q_cams = np.array([r.camid for r in data.query])
    g_cams = np.array([r.camid for r in data.gallery])
    rows = []
    for seed in range(args.draws):
        dist = np.random.default_rng(seed).random((len(q_pids), len(g_pids)))
        r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
        rows.append([r["cmc"][0], r["cmc"][4], r["cmc"][9], r["mAP"], r["mINP"]])
    mean = 100 * np.mean(rows, axis=0)
    print(f"{args.dataset}: {len(q_pids)} queries x {len(g_pids)} gallery, random distances, mean of {args.draws} draws (%)")
    print("   rank1    rank5   rank10      mAP     mINP")
    print(" ".join(f"{v:8.2f}" for v in mean))


if __name__ == "__main__":
    main()
