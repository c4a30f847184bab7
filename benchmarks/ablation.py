"""The paper's ablation ladder on the synthetic dataset, at one budget and seed per row.

For each model config (baseline, baseline_parsing, sab, sfb, magnifier) and seed, trains with
``python -m magnifier.train model=<m> seed=<s>`` (the synthetic recipe of ``make train``),
then evaluates the checkpoint that run tested (chosen on the validation identities held out from
training, ``selected_by: val/mAP``, or its final weights with ``dataset.val_split=none``) on all
test queries and on the occluded ones alone
(``occluded_queries.txt``), and prints a markdown table (rank-1 / mAP in %). For models with
an SFB it also evaluates with the ground-truth part maps in place of the parsing head's
prediction, and reports the parsing head's pixel accuracy: how much the predicted parts cost.

Usage: python benchmarks/ablation.py [--models ...] [--seeds 0 1 2] [--log-dir logs/ablation]
       [--json out.json] [--reuse] [extra hydra overrides]
--reuse evaluates the checkpoint already in the log folder instead of training again.
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
from magnifier.models.branches import labels_to_grid  # noqa: E402
from magnifier.module import ReIDModule  # noqa: E402

MODELS = ["baseline", "baseline_parsing", "sab", "sfb", "magnifier"]


def train(model: str, seed: int, log_dir: Path, extra: list[str], reuse: bool = False) -> tuple[Path, float, str]:
    """Train one rung; returns the checkpoint the run tested, the seconds, and how it was chosen."""
    if reuse:
        runs = sorted((log_dir / f"{model}-seed{seed}").glob("train/runs/*/metrics.json"))
        for found in reversed(runs):
            result = json.loads(found.read_text())
            if result.get("tested_checkpoint"):
                return Path(result["tested_checkpoint"]), float("nan"), str(result.get("selected_by"))
    args = [sys.executable, "-m", "magnifier.train", f"model={model}", f"seed={seed}", "logger=csv",
            f"paths.log_dir={log_dir / f'{model}-seed{seed}'}", "~callbacks.progress_bar", *extra]
    t0 = time.perf_counter()
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"training {model} seed {seed} failed:\n{run.stderr[-3000:]}")
    m = re.search(r"checkpoint: (\S+) \(selected by ([^:]+):", run.stdout)
    if m is None or m.group(1).startswith("("):
        raise SystemExit(f"training {model} seed {seed} tested no checkpoint file:\n{run.stdout[-2000:]}")
    return Path(m.group(1)), time.perf_counter() - t0, m.group(2)


def _metrics(feats: torch.Tensor, pids, cams, nq: int, occluded: np.ndarray, prefix: str) -> dict[str, float]:
    dist = torch.cdist(feats[:nq], feats[nq:]).numpy()
    out = {}
    for name, sel in (("all", np.ones(nq, bool)), ("occluded", occluded)):
        r = evaluate_rank(dist[sel], pids[:nq][sel], pids[nq:], cams[:nq][sel], cams[nq:])
        out[f"{prefix}{name}_rank1"], out[f"{prefix}{name}_mAP"] = 100 * float(r["cmc"][0]), 100 * float(r["mAP"])
    return out


@torch.no_grad()
def evaluate(ckpt: Path, data_dir: str) -> dict[str, float]:
    module = ReIDModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    net = module.net
    has_sfb = getattr(net, "sfb", None) is not None
    dm = ReIDDataModule(name="synthetic", root=data_dir, num_workers=2, use_masks=False, eval_masks=has_sfb,
                        val_split="none")
    dm.setup("test")
    feats, gt_feats, pids, cams, paths, hits, pixels = [], [], [], [], [], 0, 0
    for batch in dm.test_dataloader():
        net.gt_masks_at_test = False
        feats.append(net(batch["image"]))
        if has_sfb:
            net.gt_masks_at_test = True
            gt_feats.append(net(batch["image"], batch["mask"]))
            pred = net.parse(batch["image"])
            # The target the head was trained on: the label map sampled as the model samples it.
            gt = labels_to_grid(batch["mask"], tuple(pred.shape[-2:]), getattr(net, "grid_sampling", "corner"))
            hits, pixels = hits + int((pred == gt).sum()), pixels + gt.numel()
        pids.append(batch["pid"])
        cams.append(batch["camid"])
        paths += batch["path"]
    net.gt_masks_at_test = False
    p, c = torch.cat(pids).numpy(), torch.cat(cams).numpy()
    nq = len(dm.query_set)
    occluded = set((Path(dm.data.root) / "occluded_queries.txt").read_text().split())
    occ = np.array([Path(x).name in occluded for x in paths[:nq]])
    out = _metrics(torch.cat(feats), p, c, nq, occ, "")
    if has_sfb:
        out.update(_metrics(torch.cat(gt_feats), p, c, nq, occ, "gt_parts_"))
        out["parsing_pixel_accuracy"] = 100 * hits / pixels
    out["num_occluded_queries"] = int(occ.sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--log-dir", default=str(project_root() / "logs" / "ablation"))
    p.add_argument("--data-dir", default=os.environ.get("MAGNIFIER_DATA", str(project_root() / "data")))
    p.add_argument("--json", default=None)
    p.add_argument("--reuse", action="store_true", help="evaluate existing checkpoints in --log-dir")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args()
    rows = []
    for model in args.models:
        for seed in args.seeds:
            extra = [f"paths.data_dir={args.data_dir}", *args.overrides]
            ckpt, seconds, selected_by = train(model, seed, Path(args.log_dir), extra, reuse=args.reuse)
            res = evaluate(ckpt, args.data_dir)
            rows.append({"model": model, "seed": seed, "train_seconds": seconds, "checkpoint": str(ckpt),
                         "selected_by": selected_by, **res})
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
    gt_rows = [r for r in rows if "gt_parts_all_mAP" in r]
    if gt_rows:
        print("\nWith ground-truth part maps at test time instead of the parsing head's prediction:")
        print("| model | parsing pixel accuracy | rank-1 (all) | mAP (all) | rank-1 (occluded) | mAP (occluded) |")
        print("|---|---|---|---|---|---|")
        for model in args.models:
            sel = [r for r in gt_rows if r["model"] == model]
            if not sel:
                continue
            keys = ("parsing_pixel_accuracy", "gt_parts_all_rank1", "gt_parts_all_mAP", "gt_parts_occluded_rank1",
                    "gt_parts_occluded_mAP")
            print(f"| {model} | " + " | ".join(f"{np.mean([r[k] for r in sel]):.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
