"""Copy the small result files that notebooks/03_results.ipynb reads out of real runs.

They come from the project's own commands (see notebooks/results/README.md):

    python benchmarks/ablation.py --models ... --seeds 0 --json <ablation.json>
    python -m magnifier.evaluate -m ckpt_path=<best of each model>,... eval.rerank=true \
        eval.ranked_lists.worst=0 eval.ranked_lists.best=0 logger=csv hydra.sweep.dir=<sweep>

Usage: python notebooks/results/assemble.py <ablation.json> [...] --sweep <sweep folder>
Keeps each evaluation's .hydra/overrides.yaml and metrics.json (not its 2 MB features.npz),
then rebuilds the sweep's results table where it now lies (python -m magnifier.results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from magnifier.results import run_folders, write_table

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ablation", nargs="+", help="benchmarks/ablation.py --json files (or JSON lines)")
    parser.add_argument("--sweep", required=True, help="the evaluation multirun folder")
    args = parser.parse_args()
    rows = []
    for path in args.ablation:
        text = Path(path).read_text().strip()
        rows += json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
    (HERE / "ablation_synthetic.json").write_text(json.dumps(rows, indent=1) + "\n")
    target = HERE / "rerank_sweep"
    shutil.rmtree(target, ignore_errors=True)
    for run in run_folders(Path(args.sweep)):
        (target / run.name / ".hydra").mkdir(parents=True)
        # copy2 and the folder's times: the table's run time is read from them.
        shutil.copy2(run / ".hydra" / "overrides.yaml", target / run.name / ".hydra" / "overrides.yaml")
        shutil.copy2(run / "metrics.json", target / run.name / "metrics.json")
        stat = (run / ".hydra").stat()
        os.utime(target / run.name / ".hydra", (stat.st_atime, stat.st_mtime))
    write_table(target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target)


if __name__ == "__main__":
    main()
