"""Sweeps: an Optuna search that persists and resumes its study, and sweeps over keys that do
not exist refused before the first run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import optuna
import pytest

from magnifier.sweeps import resume_study

from .conftest import tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
SHORT = ["logger=csv", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "+trainer.limit_train_batches=2",
         "test=false", "~callbacks.progress_bar"]


def _train(args, timeout=900):
    return subprocess.run([sys.executable, "-m", "magnifier.train", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_stale_running_trials_are_closed_and_counted(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert resume_study(storage, "s") == 0  # nothing stored yet
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.tell(study.ask(), 0.5)
    study.ask()  # left running by a sweep that was killed
    assert resume_study(storage, "s") == 2
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert resume_study(storage, "other") == 0


def test_optuna_search_persists_its_study_and_resumes(tiny_data_dir, tmp_path):
    logs = tmp_path / "logs"
    args = ["hparams_search=optuna", *tiny_overrides(tiny_data_dir), f"paths.log_dir={logs}", *SHORT]
    first = _train(args + ["hydra.sweeper.n_trials=2"])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    sweep = next((logs / "train" / "multiruns").iterdir())
    assert (sweep / "optuna.db").is_file() and "sweep results (2 runs" in first.stdout
    # Resume: the same command in the same folder, asking for 3 trials in all, runs one more.
    second = _train(args + ["hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"])
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "sweep results (3 runs" in second.stdout
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:  # trial i ran in folder i and its value is that run's validation mAP
        result = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert trial.value == pytest.approx(result["metrics"]["val/mAP"])
        overrides = (sweep / str(trial.number) / ".hydra" / "overrides.yaml").read_text()
        assert f"optim.optimizer.lr={trial.params['optim.optimizer.lr']}" in overrides
    # The documented search space, and a resumed sampler that does not replay the first points.
    assert set(study.trials[0].params) == {
        "optim.optimizer.lr", "loss.parsing_weight", "loss.srb_weight", "loss.region_weight",
        "loss.diversity_weight", "model.erase_upper", "model.erase_lower", "dataset.erasing_p"}
    assert study.trials[2].params != study.trials[0].params
    rows = list(csv.DictReader(open(sweep / "results.csv")))
    assert [r["status"] for r in rows] == ["finished"] * 3


@pytest.mark.parametrize("args, key", [
    (["-m", "model.not_a_key=1,2"], "model.not_a_key"),
    (["-m", "dataset.batchsize=32,64"], "dataset.batchsize"),
    (["hparams_search=optuna", "loss.not_a_weight=interval(0,1)"], "loss.not_a_weight"),
    # A search space of the user's own, in a config file (conf/hparams_search/<name>.yaml).
    (["hparams_search=mine"], "model.erase_uper"),
])
def test_sweeps_over_unknown_keys_stop_before_the_first_run(args, key, tmp_path):
    mine = tmp_path / "conf" / "hparams_search" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# @package _global_\ndefaults:\n  - optuna\nhydra:\n  sweeper:\n    params:\n"
                    "      model.erase_uper: choice(1, 2)\n")
    run = _train([*args, f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
                  f"hydra.searchpath=[file://{tmp_path / 'conf'}]"], timeout=300)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"names {key}, which the config does not have" in last
    assert not (tmp_path / "data").exists() and not list(tmp_path.rglob("metrics.json"))  # no run started


def test_sweeps_over_known_keys_and_groups_are_accepted(tmp_path):
    from magnifier.sweeps import unknown_sweep_key

    from .conftest import compose

    from omegaconf import OmegaConf

    # A multirun's master config holds its sweeps as text, in hydra.overrides.task.
    cfg = OmegaConf.create(OmegaConf.to_container(compose([], output_dir=str(tmp_path))))
    cfg.hydra.overrides.task = ["model=baseline,magnifier", "loss.margin=0.2,0.3", "+extra.key=1,2",
                                "model/backbone=resnet18,resnet34", "seed=3"]
    assert unknown_sweep_key(cfg) is None
    cfg.hydra.overrides.task = ["loss.margn=0.2,0.3"]
    assert "keys under loss:" in unknown_sweep_key(cfg) and "margin" in unknown_sweep_key(cfg)


def test_trials_ended_by_max_steps_are_scored_on_validation(tiny_data_dir, tmp_path):
    """The issue's sweep: 2 trials of 2 steps each, validation every 10 epochs; each trial
    validates at its last step and is scored on the held-out identities."""
    logs = tmp_path / "logs"
    run = _train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "++trainer.max_steps=2", "logger=csv",
                  "test=false", "~callbacks.progress_bar", *tiny_overrides(tiny_data_dir), f"paths.log_dir={logs}"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    sweep = next((logs / "train" / "multiruns").iterdir())
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["selected_by"] for r in rows] == ["val/mAP"] * 2 and all(r["test/mAP"] == "-" for r in rows)


def test_a_sweep_with_no_scored_trial_ends_with_one_line_and_exit_2(tiny_data_dir, tmp_path):
    """No validation batch runs (limit_val_batches=0): each trial is recorded failed with why,
    and the sweep ends with one line, the results table written, no traceback."""
    logs = tmp_path / "logs"
    run = _train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *tiny_overrides(tiny_data_dir),
                  f"paths.log_dir={logs}", *SHORT, "+trainer.limit_val_batches=0"])
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout
    sweep = next((logs / "train" / "multiruns").iterdir())
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial of the sweep produced a value (2 trial(s), all failed")
    assert str(sweep / "results.md") in last and (sweep / "results.md").is_file()
    for trial in ("0", "1"):
        result = json.loads((sweep / trial / "metrics.json").read_text())
        assert result["status"] == "failed"
        assert result["error"] == "no val/mAP: trainer.limit_val_batches=0 runs no validation batch"
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "failed"]


def test_an_optuna_sweep_without_a_validation_split_is_refused_before_its_first_run(tmp_path):
    run = _train(["hparams_search=optuna", "dataset.val_split=none", f"paths.log_dir={tmp_path}"])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: hparams_search=optuna maximises val/mAP, but dataset.val_split=none leaves no validation split to "
        "score trials on; use dataset.val_split=holdout")
    assert not (tmp_path / "train" / "multiruns").exists() or not any((tmp_path / "train" / "multiruns").rglob("*.ckpt"))
