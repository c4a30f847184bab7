"""What a run tells a new user (issue 13): --help that explains, the settings a run really uses,
a best checkpoint whatever max_epochs is, loader workers sized to the machine, and the
results in train.log and metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import CONF, compose, tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magnifier.train", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_groups_and_the_options_used_most_not_the_whole_config():
    run = _train("--help")
    assert run.returncode == 0, run.stderr
    text = run.stdout
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    for group in groups:
        assert f"\n{group}: " in text, group  # one line per group with its options
    assert "model/backbone: resnet101, resnet18, resnet34, resnet50" in text
    for option in ("trainer.gpus=N", "dataset=<name>", "ckpt_path=", "--cfg job", "dry_run=true"):
        assert option in text
    assert "_target_" not in text and "check_val_every_n_epoch" not in text  # no raw config dump
    assert len(text.splitlines()) < 60


def test_dry_run_prints_the_resolved_trainer_settings_and_keeps_no_folder(tmp_path):
    run = _train("dataset=duke", "trainer.gpus=4", f"paths.log_dir={tmp_path}", "dry_run=true")
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert "accelerator=gpu devices=4" in first and "strategy=ddp sync_batchnorm=true precision=32-true" in first
    assert f"run folder: {tmp_path}/train/runs/" in run.stdout and "${" not in run.stdout
    assert "dataset=duke in " in run.stdout and "loader worker(s) per process" in run.stdout
    assert not list(tmp_path.rglob("*"))


def test_dry_run_of_every_gpu_keeps_minus_one_with_the_ddp_settings():
    from magnifier.config import trainer_kwargs

    kwargs = trainer_kwargs({"gpus": -1}, check_devices=False)
    assert kwargs["devices"] == -1 and kwargs["strategy"] == "ddp" and kwargs["sync_batchnorm"] is True


def test_describe_run_with_gpus_zero_keeps_the_configured_devices(tmp_path):
    from magnifier.config import describe_run, trainer_kwargs

    cfg = compose(["trainer=ddp_sim"], output_dir=str(tmp_path))
    text = describe_run(cfg, trainer_kwargs(cfg.trainer, check_devices=False))
    assert f"accelerator={cfg.trainer.accelerator} devices={cfg.trainer.devices}" in text
    assert f"run folder: {tmp_path}" in text


@pytest.mark.parametrize("wanted, gpus, cores, expected", [(4, 0, 2, 2), (4, 0, 16, 4), (4, 4, 16, 4), (4, 4, 8, 2),
                                                           (4, -1, 2, 2), (2, 0, 1, 1), (0, 0, 8, 0)])
def test_loader_workers_follow_the_cores_per_process(monkeypatch, wanted, gpus, cores, expected):
    from magnifier import config

    monkeypatch.setattr(config, "usable_cores", lambda: cores)
    assert config.loader_workers(wanted, gpus) == expected


def test_every_dataset_config_sizes_its_workers_to_the_machine(tmp_path):
    from magnifier.config import loader_workers

    for name in sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")):
        cfg = compose([f"dataset={name}"], output_dir=str(tmp_path))
        assert cfg.dataset.num_workers == loader_workers(4 if name != "synthetic" else 2, 0), name


def test_a_short_run_under_a_long_validation_interval_still_ends_with_a_best_checkpoint(tiny_data_dir, tmp_path):
    """max_epochs=1 with validation every 10 epochs: validated after the last epoch all the same;
    the settings, the dataset summary and the table reach train.log; metrics.json holds the rows."""
    run = _train(*tiny_overrides(tiny_data_dir), f"paths.log_dir={tmp_path}", "logger=csv",
                 "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=10", "+trainer.limit_train_batches=2",
                 "~callbacks.progress_bar")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(selected by val/mAP: its best on the validation split)" in run.stdout
    (folder,) = list(tmp_path.glob("train/runs/*"))
    (best,) = list(folder.glob("checkpoints/best-epoch000-*.ckpt"))
    assert run.stdout.splitlines()[0].startswith("trainer: accelerator=")
    log = (folder / "train.log").read_text()
    summary = next(ln for ln in run.stdout.splitlines() if ln.startswith("dataset synthetic ("))
    for text in ("trainer: accelerator=auto (cpu here)", summary, "  gallery ", "synthetic query/gallery (test, %):", f"checkpoint: {best} (selected by val/mAP",
                 "  val query "):
        assert text in log, text
    result = json.loads((folder / "metrics.json").read_text())
    assert result["status"] == "finished" and result["best_checkpoint"] == result["tested_checkpoint"] == str(best)
    assert result["selected_by"] == "val/mAP"
    assert set(result["val"]) == set(result["test"]) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert 0 <= result["test"]["mAP"] <= 1 and result["runtime_s"] > 0
    assert f"{100 * result['test']['rank1']:8.2f}" in run.stdout
    # The final test's report.html: printed where it lies, the table holds the test row.
    assert f"report: {folder / 'report.html'}" in run.stdout
    page = (folder / "report.html").read_text()
    assert 'id="metrics"' in page and f"{100 * result['test']['mAP']:.2f}" in page


def test_a_folder_dataset_without_camera_ids_warns_at_start_and_beside_the_table(tiny_data_dir, tmp_path):
    """Without camera ids the ranking is another protocol (rank-1 57.1 against 14.3 on the same
    data, as seen by a user): the run says so at the start and again under the results."""
    root = tiny_data_dir / "synthetic"
    rows = ["path,pid,split"]
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        rows += [f"{folder}/{p.name},{int(p.name[:4])},{split}" for p in sorted((root / folder).glob("*.jpg"))]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    run = _train("dataset=folder", f"paths.data_dir={root}", f"dataset.options.csv={csv_path}",
                 "model/backbone=resnet18", "dataset.height=64", "dataset.width=32", "dataset.batch_size=16",
                 "dataset.num_instances=4", "dataset.num_workers=0", f"paths.log_dir={tmp_path / 'logs'}", "logger=csv",
                 "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "~callbacks.progress_bar")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    warnings = [i for i, ln in enumerate(lines) if ln.startswith(f"warning: {csv_path} has no camid column")]
    table = next(i for i, ln in enumerate(lines) if ln.startswith("folder query/gallery"))
    assert len(warnings) == 2 and warnings[0] < table < warnings[1], run.stdout
    assert "not comparable with published numbers" in lines[warnings[1]]
