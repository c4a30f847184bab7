"""The sweep results table: written at the end of a real multirun, rebuilt from run folders,
also after runs that failed or were killed."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from magnifier.results import COLUMNS, collect, main, write_run_results, write_table

from .conftest import tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _fake_run(sweep: Path, name: str, overrides: list[str], result: dict | None) -> Path:
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if result is not None:
        write_run_results(run, **result)
    return run


def test_table_rows_from_run_folders_by_hand(tmp_path):
    _fake_run(tmp_path, "0", ["seed=1", "optim.optimizer.lr=0.1"],
              dict(status="finished", metrics={"val/rank1": 0.5, "val/mAP": 0.25, "test/mINP": 0.125}, runtime_s=90.0))
    _fake_run(tmp_path, "1", ["seed=1", "optim.optimizer.lr=0.2"],
              dict(status="failed", metrics={}, runtime_s=3.0, error="boom"))
    _fake_run(tmp_path, "10", ["seed=1", "optim.optimizer.lr=0.3"], None)  # killed: no metrics.json
    (tmp_path / ".submitit").mkdir()  # not a run
    rows = collect(tmp_path)
    assert [r["run"] for r in rows] == ["0", "1", "10"]  # job order, not string order
    first = rows[0]
    # Only what the sweep varied: the shared seed=1 is left out.
    assert first["overrides"] == "optim.optimizer.lr=0.1"
    assert (first["val/rank1"], first["val/mAP"], first["test/mINP"]) == (50.0, 25.0, 12.5)
    assert first["time_min"] == 1.5 and first["status"] == "finished"
    assert rows[1]["status"] == "failed" and rows[2]["status"] == "incomplete"
    assert main([str(tmp_path)]) == 0
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert list(table[0]) == COLUMNS and table[0]["val/mAP"] == "25.00" and table[2]["val/mAP"] == "-"
    md = (tmp_path / "results.md").read_text().splitlines()
    assert len(md) == 2 + 3 and "| 0 | optim.optimizer.lr=0.1 | 50.00 | 25.00 |" in md[2]


def test_results_command_refuses_what_is_not_a_sweep(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_grid_multirun_ends_with_the_table_and_the_command_rebuilds_it(tiny_data_dir, tmp_path):
    logs = tmp_path / "logs"
    run = subprocess.run(
        [sys.executable, "-m", "magnifier.train", "-m", *tiny_overrides(tiny_data_dir), f"paths.log_dir={logs}",
         "logger=csv", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "+trainer.limit_train_batches=2",
         "~callbacks.progress_bar", "optim.optimizer.lr=3.5e-4,1e-3"],
        env=ENV, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    sweep = next((logs / "train" / "multiruns").iterdir())
    printed = run.stdout[run.stdout.index("sweep results (2 runs"):]
    rows = [line for line in printed.splitlines() if re.match(r"\| \d ", line)]
    # Hydra writes the swept values back as numbers: 3.5e-4 becomes 0.00035.
    assert len(rows) == 2 and "| optim.optimizer.lr=0.00035 |" in rows[0] and "| optim.optimizer.lr=0.001 |" in rows[1]
    table = list(csv.DictReader(open(sweep / "results.csv")))
    for row, job in zip(table, ("0", "1")):
        result = json.loads((sweep / job / "metrics.json").read_text())
        assert row["status"] == "finished" and row["folder"] == str(sweep / job)
        assert float(row["val/mAP"]) == pytest.approx(100 * result["metrics"]["val/mAP"], abs=0.006)
        assert float(row["test/rank1"]) == pytest.approx(100 * result["metrics"]["test/rank1"], abs=0.006)
        assert float(row["time_min"]) > 0
    # A crash half-way: the second run lost its results; the command rebuilds the table.
    (sweep / "1" / "metrics.json").unlink()
    (sweep / "results.csv").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "magnifier.results", str(sweep)], env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    table = list(csv.DictReader(open(sweep / "results.csv")))
    assert [r["status"] for r in table] == ["finished", "incomplete"]


def test_a_run_continued_in_its_own_folder_counts_the_earlier_time(tmp_path):
    from magnifier.results import earlier_runtime_s

    assert earlier_runtime_s(tmp_path) == 0.0
    write_run_results(tmp_path, "stopped", {}, 120.0)
    assert earlier_runtime_s(tmp_path) == 120.0
    write_run_results(tmp_path, "finished", {}, 200.0)
    assert earlier_runtime_s(tmp_path) == 0.0  # a finished run is not continued


def test_a_sweep_of_evaluations_gets_its_plain_and_reranked_rows(tmp_path):
    """``python -m magnifier.evaluate -m ckpt_path=a,b eval.rerank=true``: the table shows each
    evaluation's plain and re-ranked rank-1/mAP/mINP, read from its metrics.json."""
    for job, (plain, reranked) in enumerate([(0.5, 0.625), (0.25, None)]):
        run = tmp_path / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- ckpt_path=c{job}.ckpt\n- eval.rerank=true\n")
        rows = {"plain": {"rank1": plain, "mAP": plain / 2, "mINP": 0.1, "num_valid_queries": 4}}
        if reranked is not None:
            rows["reranked"] = {"rank1": reranked, "mAP": reranked / 2, "mINP": 0.2}
        (run / "metrics.json").write_text(json.dumps({"dataset": "synthetic", "metrics": rows, "cmc": {}}))
    rows, text = write_table(tmp_path)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert rows[0]["plain/rank1"] == 50.0 and rows[0]["reranked/mAP"] == 31.25
    assert math.isnan(rows[1]["reranked/rank1"]) and rows[1]["overrides"] == "ckpt_path=c1.ckpt"
    header = text.splitlines()[0]
    assert "plain/rank1" in header and "reranked/mINP" in header and "val/mAP" not in header
    table = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert table[0]["reranked/rank1"] == "62.50" and table[1]["reranked/rank1"] == "-"
