"""An offline W&B run is readable before ``wandb sync``: its config and summary are in its files.

Online, wandb itself writes ``files/config.yaml`` and ``files/wandb-summary.json``; offline
(wandb 0.31) only ``output.log`` and ``requirements.txt`` are there. One short training run
and one evaluation of its checkpoint, each read back from the run's ``.wandb`` file and its
``files/`` folder. The evaluation run also carries its own flat config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import tiny_overrides
from .test_wandb_dashboard import _run, read_run

# wandb's own bookkeeping, not logged values: they differ between the records and the files.
TIMING = {"_runtime", "_timestamp", "_wandb"}


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory) -> dict[str, Path]:
    """The offline run folders of a two-step training run and of an evaluation of its checkpoint."""
    tmp = tmp_path_factory.mktemp("wandb_files")
    common = tiny_overrides(tiny_data_dir) + [f"paths.log_dir={tmp / 'logs'}", "logger=wandb"]
    _run("magnifier.train", common + [
        f"hydra.run.dir={tmp / 'train'}", "model=baseline", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1", "test=false", "~callbacks.progress_bar",
        "trainer.enable_model_summary=false"], cwd=tmp)
    ckpt = tmp / "train" / "checkpoints" / "last.ckpt"
    _run("magnifier.evaluate", common + [
        f"ckpt_path={ckpt}", f"hydra.run.dir={tmp / 'eval'}", "eval.ranked_lists.worst=1",
        "eval.ranked_lists.best=0", "eval.save_features=false"], cwd=tmp)
    (train,) = (tmp / "train" / "wandb").glob("offline-run-*")
    (evaluation,) = (tmp / "eval" / "wandb").glob("offline-run-*")
    return {"train": train, "evaluate": evaluation, "ckpt": ckpt}


def read_files(folder: Path) -> tuple[dict, dict]:
    """``files/config.yaml`` (through wandb's own reader) and ``files/wandb-summary.json``."""
    from wandb.sdk.lib.config_util import dict_from_config_file

    config = dict_from_config_file(str(folder / "files" / "config.yaml"), must_exist=True)
    summary = json.loads((folder / "files" / "wandb-summary.json").read_text())
    return config, summary


def _logged(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in TIMING}


@pytest.mark.multiprocess
def test_training_run_files_hold_the_config_and_the_final_metrics(runs):
    run = read_run(runs["train"])
    config, summary = read_files(runs["train"])

    # The config file is wandb's ({key: {value: ...}}, read back by wandb) with the run's flat keys.
    assert _logged(config) == _logged(run["config"])
    assert config["optim/optimizer/lr"] == pytest.approx(3.5e-4)
    assert config["model/_target_"].endswith("Baseline")
    assert config["_wandb"]["cli_version"]

    # The summary file holds the last value of every metric, as the run's own summary does.
    assert _logged(summary) == _logged(run["summary"])
    last = {}
    for row in run["history"]:
        last.update(row)
    assert {"train/loss", "val/mAP", "val/rank1", "epoch"} <= set(summary)
    assert all(summary[k] == pytest.approx(last[k]) for k in ("train/loss", "val/mAP", "val/rank1"))


@pytest.mark.multiprocess
def test_evaluation_run_logs_its_flat_config_and_writes_the_files(runs):
    run = read_run(runs["evaluate"])
    config = {k: v for k, v in run["config"].items() if not k.startswith("_")}

    # The evaluation's settings, flat as in training, and the network the checkpoint holds.
    assert config["ckpt_path"] == str(runs["ckpt"]) and config["task_name"] == "evaluate"
    assert config["eval/rerank"] is False and config["eval/ranked_lists/worst"] == 1
    assert config["dataset/name"] == "synthetic" and config["dataset/use_masks"] is False
    assert config["model/_target_"].endswith("Baseline")
    assert config["model/backbone/name"] == "resnet18"
    assert not any(isinstance(v, dict) for v in config.values())
    # Training-only groups (loss, optimiser, trainer) do not apply to an evaluation.
    assert not any(k.split("/")[0] in ("loss", "optim", "trainer", "hydra") for k in config)

    files_config, summary = read_files(runs["evaluate"])
    assert _logged(files_config) == _logged(run["config"])
    assert summary["plain/mAP"] == pytest.approx(run["summary"]["plain/mAP"])
    assert summary["per_query"]["_type"] == "table-file"
