"""How much does training lose with the built-in parser's maps instead of exact ones?

    NO_ALBUMENTATIONS_UPDATE=1 python benchmarks/parser_vs_true_maps.py [--work /tmp/pvt] [--train]

1. builds the default synthetic dataset (exact 8-part label maps) in ``<work>/true/synthetic``;
2. copies its images into ``<work>/parsed/synthetic`` and runs the real command
   ``python -m magnifier.parse`` on them (training split), the maps landing where training reads
   them;
3. prints per-part IoU, mean IoU and pixel accuracy of the parsed maps against the exact ones
   (training images; "person found" counts the images with any part);
4. with ``--train``: the make-train recipe (``python -m magnifier.train`` with the defaults)
   on each copy, and the two test rows (rank-1, mAP, mINP).

Everything goes through the public commands, so the numbers are what a user gets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from magnifier.parts import NUM_PARTS, PART_NAMES  # noqa: E402

SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _run(args: list[str], log: Path) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    f_out = done.stdout
    log.with_suffix(".out").write_text(f_out)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed (exit {done.returncode}); see {log}")
    return f_out


def accuracy(true_root: Path, parsed_root: Path) -> list[str]:
    conf = np.zeros((NUM_PARTS, NUM_PARTS), np.int64)
    found = total = 0
    for gt_path in sorted((true_root / "masks" / "bounding_box_train").glob("*.png")):
        pred_path = parsed_root / "masks" / "bounding_box_train" / gt_path.name
        gt, pred = np.asarray(Image.open(gt_path)), np.asarray(Image.open(pred_path))
        total += 1
        found += bool(pred.any())
        conf += np.bincount(gt.reshape(-1).astype(np.int64) * NUM_PARTS + pred.reshape(-1),
                            minlength=NUM_PARTS ** 2).reshape(NUM_PARTS, NUM_PARTS)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    person = conf[1:, :].sum()
    lines = [f"training images: {total}, person found in {found}",
             "| part | IoU |", "|---|---|"]
    lines += [f"| {PART_NAMES[i]} | {iou[i]:.3f} |" for i in range(NUM_PARTS)]
    lines += [f"| mean (8 labels) | {iou.mean():.3f} |",
              f"| pixel accuracy | {inter.sum() / conf.sum():.3f} |",
              f"| accuracy on person pixels | {np.diag(conf)[1:].sum() / max(person, 1):.3f} |"]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/parser_vs_true"))
    ap.add_argument("--workers", type=int, default=None, help="parser processes (default: the cores)")
    ap.add_argument("--train", action="store_true", help="also train the make-train recipe on each copy")
    ap.add_argument("train_args", nargs="*", help="extra overrides for both trainings (e.g. trainer.max_epochs=5)")
    args = ap.parse_args(argv)
    true_data, parsed_data = args.work / "true", args.work / "parsed"
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _run(["magnifier.data.synthetic", f"root={true_data / 'synthetic'}"], logs / "synthetic.log")
    if not (parsed_data / "synthetic" / "masks").is_dir():
        shutil.rmtree(parsed_data, ignore_errors=True)
        shutil.copytree(true_data / "synthetic", parsed_data / "synthetic", ignore=shutil.ignore_patterns("masks"))
    workers = [f"workers={args.workers}"] if args.workers else []
    out = _run(["magnifier.parse", f"paths.data_dir={parsed_data}", f"paths.log_dir={logs}", *workers],
               logs / "parse.log")
    print("\n".join(line for line in out.splitlines() if not line.startswith("parsing ")))
    print("\n".join(accuracy(true_data / "synthetic", parsed_data / "synthetic")))
    if args.train:
        print("\n| maps | rank-1 | mAP | mINP |\n|---|---|---|---|")
        for name, root in (("exact (synthetic)", true_data), ("built-in parser", parsed_data)):
            out = _run(["magnifier.train", f"paths.data_dir={root}", f"paths.log_dir={logs / name.split()[0]}",
                        "logger=csv", *args.train_args], logs / f"train_{name.split()[0]}.log")
            lines = out.splitlines()
            i = max(k for k, ln in enumerate(lines) if ln.split()[:1] == ["rank1"])
            head, row = lines[i], lines[i + 1]
            values = dict(zip(head.split(), row.split()))
            print(f"| {name} | {values.get('rank1', '-')} | {values.get('mAP', '-')} | {values.get('mINP', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
