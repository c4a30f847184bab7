"""The results table of a sweep: one row per run, rebuilt from the run folders.

Every training run writes ``metrics.json`` into its folder when it ends (finished, failed, or
stopped by a signal): status, the final validation and test rows, the best checkpoint and the
run time. A run that was killed outright leaves none and shows as ``incomplete``.
At the end of every multirun (grid or Optuna) :class:`ResultsTableCallback`, a Hydra callback,
prints the table and writes ``results.csv`` and ``results.md`` into the sweep folder, and

    python -m magnifier.results <sweep folder>

rebuilds them at any time, also for a sweep that crashed half-way or is still running.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

def say(text: str) -> None:
    """Print ``text`` and also write it into the run's log file (Hydra's ``<task>.log``), so that
    the log holds what the console showed (the dataset summary, the results table) without
    the console showing it twice."""
    import logging

    print(text, flush=True)
    record = logging.LogRecord("magnifier", logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


#: File each run writes into its output folder (``results.json`` before 2026-11-27, still read).
RUN_RESULTS = "metrics.json"
_OLD_RUN_RESULTS = "results.json"
#: The metrics of a final row (``val/<key>``, ``test/<key>``), fractions in [0, 1].
ROW_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")
#: Metric columns, in percent: validation and test rank-1, mAP, mINP of training runs ...
METRIC_COLUMNS = [f"{split}/{key}" for split in ("val", "test") for key in ("rank1", "mAP", "mINP")]
#: ... and the plain and re-ranked rows of evaluation runs (``python -m magnifier.evaluate -m``).
EVAL_METRIC_COLUMNS = [f"{row}/{key}" for row in ("plain", "reranked") for key in ("rank1", "mAP", "mINP")]
COLUMNS = ["run", "overrides", *METRIC_COLUMNS, "selected_by", "time_min", "status", "folder"]


def _flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """A run's metrics as ``row/key`` fractions: a training run's are flat already; an
    evaluation's ``metrics.json`` nests them by row (``{"plain": {"mAP": ...}}``)."""
    flat = {}
    for key, value in (result.get("metrics") or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            flat[key] = value
    return flat


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: training metrics, or evaluation rows when the runs are evaluations."""
    evaluations = rows and all(any(k in r for k in EVAL_METRIC_COLUMNS) for r in rows)
    if evaluations:
        return ["run", "overrides", *EVAL_METRIC_COLUMNS, "time_min", "status", "folder"]
    return COLUMNS


def write_run_results(output_dir: str | Path, status: str, metrics: dict[str, float], runtime_s: float,
                      best_checkpoint: str | None = None, error: str | None = None, *,
                      selected_by: str | None = None, tested_checkpoint: str | None = None) -> Path:
    """Write a run's ``metrics.json``.

    Keys: ``status`` (finished | failed | stopped), ``val`` and ``test`` (the final rows:
    rank1, rank5, rank10, mAP, mINP as fractions; empty when that split was not evaluated),
    ``selected_by`` (how the tested checkpoint was chosen: the validation metric its callback
    monitors, ``val/mAP``, or ``last``: the final weights; null when training did not end),
    ``tested_checkpoint`` (the file the test read; null for the weights in memory),
    ``best_checkpoint`` (the best validation checkpoint, null without one), ``runtime_s``,
    ``error``, and ``metrics`` (every logged value, flat).
    """
    path = Path(output_dir) / RUN_RESULTS
    flat = {k: float(v) for k, v in metrics.items()}
    rows = {split: {k: flat[f"{split}/{k}"] for k in ROW_KEYS if f"{split}/{k}" in flat} for split in ("val", "test")}
    body = {"status": status, **rows, "selected_by": selected_by, "tested_checkpoint": tested_checkpoint,
            "best_checkpoint": best_checkpoint, "runtime_s": float(runtime_s), "error": error, "metrics": flat}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)
    return path


def read_run_results(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``metrics.json`` (or the older ``results.json``); {} when it has none."""
    for name in (RUN_RESULTS, _OLD_RUN_RESULTS):
        try:
            return json.loads((Path(run_dir) / name).read_text())
        except (OSError, ValueError):
            continue
    return {}


def earlier_runtime_s(output_dir: str | Path) -> float:
    """Run time already spent in this folder by a run that was stopped there (SIGTERM, a
    requeued SLURM job) and is now continued: the table shows the total."""
    result = read_run_results(output_dir)
    return float(result.get("runtime_s", 0.0)) if result.get("status") == "stopped" else 0.0


def _overrides(run_dir: Path) -> list[str]:
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])] if path.is_file() else []


def _runtime_s(run_dir: Path) -> float:
    """Elapsed time of a run without results: from its config to its newest file."""
    start = (run_dir / ".hydra").stat().st_mtime if (run_dir / ".hydra").is_dir() else run_dir.stat().st_mtime
    newest = max((p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file()), default=start)
    return max(newest - start, 0.0)


def run_folders(sweep_dir: Path) -> list[Path]:
    """The runs of a sweep: sub-folders holding a ``.hydra`` config, in job order."""
    runs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(runs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run of ``sweep_dir``; only the overrides that differ between runs are shown
    (all of them for a single run), so the column names what the sweep varied."""
    sweep_dir = Path(sweep_dir)
    runs = run_folders(sweep_dir)
    overrides = [_overrides(r) for r in runs]
    common = set.intersection(*(set(o) for o in overrides)) if len(runs) > 1 else set()
    rows = []
    for run, ovr in zip(runs, overrides):
        result = read_run_results(run)
        metrics = _flat_metrics(result)
        row: dict[str, Any] = {"run": run.name, "overrides": " ".join(o for o in ovr if o not in common)}
        evaluation = any(key in metrics for key in EVAL_METRIC_COLUMNS)
        for key in METRIC_COLUMNS + (EVAL_METRIC_COLUMNS if evaluation else []):
            row[key] = 100 * metrics[key] if key in metrics else math.nan
        row["selected_by"] = result.get("selected_by") or "-"
        seconds = result.get("runtime_s", _runtime_s(run))
        # An evaluation writes its metrics.json only when it finished (it has no status field).
        status = result.get("status", "finished" if metrics else "incomplete")
        row.update(time_min=seconds / 60, status=status, folder=str(run))
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, math.nan)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_table(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Build the table of ``sweep_dir`` and write ``results.csv`` and ``results.md`` into it."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    buffer = io.StringIO()
    cols = columns(rows)
    writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _cell(r.get(k, math.nan)) if isinstance(r.get(k, math.nan), float) else r[k] for k in cols}
                     for r in rows)
    text = markdown(rows)
    # Runs of a parallel sweep end at the same time: each file is replaced whole, never half-written.
    for name, body in (("results.csv", buffer.getvalue()), ("results.md", text + "\n")):
        tmp = sweep_dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(body)
        tmp.replace(sweep_dir / name)
    return rows, text


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


class ResultsTableCallback(_HydraCallback):
    """Hydra callback: the results table at the end of every multirun (``hydra.callbacks``)."""

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        """After each run of a multirun, so that a sweep that dies half-way still has its table."""
        from magnifier.errors import in_multirun

        if in_multirun():
            sweep_dir = Path(str(config.hydra.sweep.dir))
            if sweep_dir.is_dir():
                write_table(sweep_dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        rows, text = write_table(sweep_dir)
        if rows:
            print(f"\nsweep results ({len(rows)} runs, %), also in {sweep_dir}/results.csv and results.md:\n{text}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magnifier.results",
                                     description="Rebuild a sweep's results table from its run folders.")
    parser.add_argument("sweep_dir", help="the multirun folder, e.g. logs/train/multiruns/<date>_<time>")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        print(f"error: {sweep_dir}: no such folder; give a multirun folder such as logs/train/multiruns/<date>_<time>",
              file=sys.stderr)
        return 2
    rows, text = write_table(sweep_dir)
    if not rows:
        print(f"error: {sweep_dir} holds no runs (sub-folders with .hydra/overrides.yaml); is it a multirun folder?",
              file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
