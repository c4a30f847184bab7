"""Seconds from start to the one-line refusal of a broken checkpoint, for ``python -m
magnifier.train ckpt_path=...`` and ``python -m magnifier.evaluate ckpt_path=...``, and of a
dataset folder that does not exist (``python -m magnifier.train dataset=market``): the checks
that need at most torch run before Lightning and torchmetrics are imported (about 5 s more on
two cores), so a newcomer's mistake is reported that much sooner.

Usage: python benchmarks/refusal_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline"}
    with tempfile.TemporaryDirectory() as tmp:
        garbage = Path(tmp) / "garbage.ckpt"
        garbage.write_bytes(b"not a checkpoint\n")
        print(f"seconds to the one-line refusal (median of {args.repeats}; exit code)")
        cases = [("magnifier.train", f"ckpt_path={garbage.name}", [f"ckpt_path={garbage}"]),
                 ("magnifier.evaluate", f"ckpt_path={garbage.name}", [f"ckpt_path={garbage}"]),
                 ("magnifier.train", "dataset=market (no such folder)", ["dataset=market", f"paths.data_dir={tmp}/nowhere"])]
        for command, what, extra in cases:
            times, codes = [], set()
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run = subprocess.run([sys.executable, "-m", command, *extra, f"paths.log_dir={tmp}/logs", "logger=csv"],
                                     env=env, cwd=tmp, capture_output=True, text=True)
                times.append(time.perf_counter() - t0)
                codes.add(run.returncode)
            print(f"  python -m {command:<20} {what:<34} {statistics.median(times):5.2f} s  "
                  f"(exit {', '.join(map(str, sorted(codes)))})")


if __name__ == "__main__":
    main()
