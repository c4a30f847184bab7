"""What a new user trips over (issue 13): config mistakes, broken resume files and unusable
label maps are one line with exit code 2, found before any logger or run folder exists, and a
failed start leaves no empty run folder behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magnifier.errors import UserError

from .conftest import compose, tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
ENV.pop("HYDRA_FULL_ERROR", None)


def _train(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magnifier.train", *args], env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(run: subprocess.CompletedProcess) -> str:
    """The error line, checked to be the only line on stderr."""
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 1, run.stderr[-2000:]
    assert lines[0].startswith("error: ")
    return lines[0]


# -- config mistakes ---------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epoch=2", "error: trainer.max_epoch=2: the config has no key trainer.max_epoch; "
                            "did you mean trainer.max_epochs?"),
    ("foo=1", "error: foo=1: the config has no key foo; see every key with --cfg job, or add a new one with +foo=1"),
    ("dataset=marker", "error: dataset=marker: no such dataset; did you mean dataset=market? options: cuhk03_detected, "
                       "cuhk03_labeled, duke, folder, market, msmt17, occluded_duke, synthetic"),
    ("model/backbone=resnet5", "error: model/backbone=resnet5: no such model backbone; did you mean "
                               "model/backbone=resnet50?"),
    ("trainer.max_epochs=[", "error: cannot read the override 'trainer.max_epochs=['"),
    ("+dataset=market", "error: dataset is chosen already: override it with dataset=<option>"),
])
def test_a_config_mistake_is_one_line_with_the_nearest_name_and_exit_2(override, expected):
    line = _one_line(_train(override))
    assert line.startswith(expected)


def test_hydra_full_error_keeps_hydras_own_text():
    run = _train("trainer.max_epoch=2", env={**ENV, "HYDRA_FULL_ERROR": "1"})
    assert run.returncode == 1
    assert "ConfigCompositionException" in run.stderr and "Traceback" in run.stderr


def test_the_nearest_key_prefers_the_same_parent():
    from magnifier.cli import nearest

    keys = ["trainer.max_epochs", "trainer.max_steps", "optim.max_epochs_warm", "dataset.height"]
    assert nearest("trainer.max_epoch", keys) == "trainer.max_epochs"
    assert nearest("trainer.max_step", keys) == "trainer.max_steps"
    assert nearest("dataset.heigth", keys) == "dataset.height"
    assert nearest("zzz", keys) is None


# -- resume checkpoints ------------------------------------------------------------------------
@pytest.fixture()
def broken_checkpoints(tiny_checkpoint, tmp_path) -> dict[str, Path]:
    data = tiny_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({101: torch.zeros(2), "conv.weight": torch.zeros(1)}, foreign)
    bare = tmp_path / "bare_state_dict.ckpt"
    torch.save({"conv.weight": torch.zeros(3)}, bare)
    return {"truncated": truncated, "foreign": foreign, "bare": bare}


@pytest.mark.parametrize("kind, words", [("truncated", "not a readable PyTorch checkpoint"),
                                         ("foreign", "not a training checkpoint to resume"),
                                         ("bare", "not a training checkpoint to resume")])
def test_a_broken_resume_checkpoint_is_refused_before_anything_starts(broken_checkpoints, tiny_data_dir, tmp_path,
                                                                      kind, words):
    logs = tmp_path / "logs"
    run = _train(*tiny_overrides(tiny_data_dir), f"paths.log_dir={logs}", "logger=wandb",
                 f"ckpt_path={broken_checkpoints[kind]}")
    line = _one_line(run)
    assert str(broken_checkpoints[kind]) in line and words in line
    # No W&B run, no dataset summary printed: the check comes first; and no run folder is left.
    assert "wandb" not in run.stdout.lower() and "train:" not in run.stdout
    assert not list(logs.glob("train/runs/*")), list(logs.rglob("*"))


def _refused_before_heavy_imports(command: str, args: list[str], words: str) -> None:
    """Runs ``python -m <command> <args>`` in a subprocess; it must exit 2 with ``words`` in its
    one line before Lightning or torchmetrics (about 5 s to import on two cores) is imported."""
    probe = (f"import runpy, sys; sys.argv = {[command, *args]!r}\n"
             f"try:\n    runpy.run_module('{command}', run_name='__main__')\n"
             "except SystemExit as exit:\n"
             "    heavy = sorted(m for m in ('pytorch_lightning', 'lightning_fabric', 'torchmetrics') if m in sys.modules)\n"
             "    print('exit', exit.code, 'imported', ','.join(heavy) or 'none')")
    run = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=300)
    assert words in run.stderr, run.stderr[-2000:]
    assert "exit 2 imported none" in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("command", ["magnifier.train", "magnifier.evaluate"])
def test_a_broken_checkpoint_is_refused_before_lightning_or_torchmetrics_is_imported(broken_checkpoints, tmp_path,
                                                                                      command):
    _refused_before_heavy_imports(command, [f"ckpt_path={broken_checkpoints['truncated']}",
                                            f"paths.log_dir={tmp_path}", "logger=csv"],
                                  "not a readable PyTorch checkpoint")


def test_a_missing_dataset_is_refused_before_lightning_is_imported(tmp_path):
    """The dataset's files are listed before Lightning and the data module are imported."""
    _refused_before_heavy_imports("magnifier.train", ["dataset=market", f"paths.data_dir={tmp_path}/nowhere",
                                                      f"paths.log_dir={tmp_path}/logs", "logger=csv"],
                                  f"error: dataset 'market': {tmp_path}/nowhere/bounding_box_train is missing")


def test_a_resume_checkpoint_of_another_architecture_is_one_line(tiny_checkpoint, tiny_data_dir, tmp_path):
    from magnifier.train import train

    cfg = compose(tiny_overrides(tiny_data_dir) + [f"paths.log_dir={tmp_path}", "logger=csv",
                                                   "model/backbone=resnet34", f"ckpt_path={tiny_checkpoint}"],
                  output_dir=str(tmp_path / "run"))
    with pytest.raises(SystemExit) as exited:
        train(cfg)
    assert exited.value.code == 2


def test_read_resume_checkpoint_and_the_fit_check(tiny_checkpoint, broken_checkpoints):
    from magnifier.checkpoint import check_resume_fits, read_resume_checkpoint

    ckpt = read_resume_checkpoint(tiny_checkpoint)
    assert "state_dict" in ckpt and ckpt["hyper_parameters"]["net"]
    for kind in ("truncated", "foreign", "bare"):
        with pytest.raises(UserError) as err:
            read_resume_checkpoint(broken_checkpoints[kind])
        assert "\n" not in str(err.value)
    from hydra.utils import instantiate

    net_cfg = dict(ckpt["hyper_parameters"]["net"])
    same = instantiate(net_cfg, num_classes=ckpt["hyper_parameters"]["num_classes"])
    check_resume_fits(same, tiny_checkpoint, ckpt)
    other = instantiate(net_cfg, num_classes=ckpt["hyper_parameters"]["num_classes"] + 1)
    with pytest.raises(UserError, match="its weights do not fit"):
        check_resume_fits(other, tiny_checkpoint, ckpt)


# -- label maps --------------------------------------------------------------------------------
@pytest.fixture()
def bad_label_map_data(tiny_data_dir, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny dataset with one training label map holding the value 9."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data_dir, root)
    mask = sorted((root / "synthetic" / "masks" / "bounding_box_train").glob("*.png"))[3]
    label = np.asarray(Image.open(mask)).copy()
    label[0, 0] = 9
    Image.fromarray(label).save(mask)
    return root, mask


def test_a_label_map_outside_the_parts_is_caught_by_the_setup_scan(bad_label_map_data, tmp_path):
    from hydra.utils import instantiate

    root, mask = bad_label_map_data
    dm = instantiate(compose(tiny_overrides(root), output_dir=str(tmp_path)).dataset)
    with pytest.raises(UserError, match=rf"^label map {mask} has values 0..9; part labels must be 0..7; fix or remake"):
        dm.check_files("fit")


def test_the_command_reports_it_before_any_run_folder_or_logger(bad_label_map_data, tmp_path):
    root, mask = bad_label_map_data
    logs = tmp_path / "logs"
    run = _train(*tiny_overrides(root), f"paths.log_dir={logs}", "logger=wandb")
    line = _one_line(run)
    assert f"label map {mask} has values 0..9" in line
    assert not list(logs.glob("train/runs/*"))


def test_a_failed_start_keeps_a_folder_that_holds_a_run(tmp_path, monkeypatch):
    """The clean-up removes only what Hydra and the failed start wrote."""
    from magnifier.errors import discard_failed_start

    from hydra.core.hydra_config import HydraConfig

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    compose([], output_dir=str(run))
    (run / f"{HydraConfig.get().job.name}.log").write_text("")
    (run / "checkpoints").mkdir()
    assert discard_failed_start() is None and run.is_dir()
    (run / "checkpoints").rmdir()
    monkeypatch.chdir(run)  # hydra.run.dir=. : the working folder is never removed
    assert discard_failed_start() is None and run.is_dir()
    monkeypatch.chdir(tmp_path)
    assert discard_failed_start() == run and not run.exists()
