"""The paper's ablation ladder on the synthetic dataset, at one budget and seed per row.

For each model config (baseline, baseline_parsing, sab, sfb, magnifier) and seed, trains with
``python -m magnifier.train model=<m> seed=<s>`` (the synthetic recipe of ``make train``),
then evaluates the best checkpoint on all queries and on the occluded ones alone
(``occluded_queries.txt``), and prints a markdown table (rank-1 / mAP in %).

Usage: python benchmarks/ablation.py [--models ...] [--seeds 0 1 2] [--log-dir logs/ablation]
       [--json out.json] [-- extra hydra overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from magnifier.config import project_root  # noqa: E402
from magnifier.data import ReIDDataModule  # noqa: E402
from magnifier.evaluation import evaluate_rank  # noqa: E402
from magnifier.module import ReIDModule  # noqa: E402

MODELS = ["baseline", "baseline_parsing", "sab", "sfb", "magnifier"]


def train(model: str, seed: int, log_dir: Path, extra: list[str]) -> tuple[Path, float]:
    args = [sys.executable, "-m", "magnifier.train", f"model={model}", f"seed={seed}", "logger=csv",
            f"paths.log_dir={log_dir / f'{model}-seed{seed}'}", "~callbacks.progress_bar", *extra]
    t0 = time.perf_counter()
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"training {model} seed {seed} failed:\n{run.stderr[-3000:]}")
    m = re.search(r"best checkpoint: (\S+)", run.stdout)
    return Path(m.group(1)), time.perf_counter() - t0


@torch.no_grad()
def evaluate(ckpt: Path, data_dir: str) -> dict[str, float]:
    module = ReIDModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = ReIDDataModule(name="synthetic", root=data_dir, num_workers=2, use_masks=False)
    dm.setup("test")
    feats, pids, cams, paths = [], [], [], []
    for batch in dm.test_dataloader():
        feats.append(module.net(batch["image"]))
        pids.append(batch["pid"])
        cams.append(batch["camid"])
        paths += batch["path"]
    f, p, c = torch.cat(feats), torch.cat(pids).numpy(), torch.cat(cams).numpy()
    nq = len(dm.query_set)
    dist = torch.cdist(f[:nq], f[nq:]).numpy()
    occluded = set((Path(dm.data.root) / "occluded_queries.txt").read_text().split())
    occ = np.array([Path(x).name in occluded for x in paths[:nq]])
    out = {}
    for name, sel in (("all", np.ones(nq, bool)), ("occluded", occ)):
        r = evaluate_rank(dist[sel], p[:nq][sel], p[nq:], c[:nq][sel], c[nq:])
        out[f"{name}_rank1"], out[f"{name}_mAP"] = 100 * float(r["cmc"][0]), 100 * float(r["mAP"])
    out["num_occluded_queries"] = int(occ.sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--log-dir", default=str(project_root() / "logs" / "ablation"))
    p.add_argument("--data-dir", default=os.environ.get("MAGNIFIER_DATA", str(project_root() / "data")))
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args()
    rows = []
    for model in args.models:
        for seed in args.seeds:
            ckpt, seconds = train(model, seed, Path(args.log_dir), [f"paths.data_dir={args.data_dir}", *args.overrides])
            res = evaluate(ckpt, args.data_dir)
            rows.append({"model": model, "seed": seed, "train_seconds": round(seconds), **res})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("\n| model | seeds | rank-1 (all) | mAP (all) | rank-1 (occluded) | mAP (occluded) |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        sel = [r for r in rows if r["model"] == model]
        mean = {k: np.mean([r[k] for r in sel]) for k in ("all_rank1", "all_mAP", "occluded_rank1", "occluded_mAP")}
        print(f"| {model} | {len(sel)} | {mean['all_rank1']:.1f} | {mean['all_mAP']:.1f} | "
              f"{mean['occluded_rank1']:.1f} | {mean['occluded_mAP']:.1f} |")


if __name__ == "__main__":
    main()
