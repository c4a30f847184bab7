"""Every config composes; trainer.gpus maps onto Lightning 2; user errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from magnifier.config import trainer_kwargs
from magnifier.errors import UserError

from .conftest import CONF, REPO, compose


def _options(group: str) -> list[str]:
    folder = CONF / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.glob("*.yaml"))


GROUPS = ["dataset", "masks", "model", "model/backbone", "loss", "optim", "trainer", "logger", "callbacks", "debug", "paths", "hydra"]


def test_expected_config_groups_exist():
    for group in GROUPS + ["experiment"]:
        assert (CONF / group).is_dir(), group
    assert (CONF / "train.yaml").is_file()


@pytest.mark.parametrize("group", GROUPS + ["experiment"])
def test_every_option_of_every_group_composes(group, tmp_path):
    options = _options(group)
    if group != "experiment":
        assert options, f"conf/{group} has no options"
    for option in options:
        cfg = compose([f"{group}={option}"], output_dir=str(tmp_path))
        # Resolving every interpolation catches typos in keys that are only read at run time.
        body = {k: v for k, v in cfg.items() if k != "hydra"}
        OmegaConf.to_container(OmegaConf.create(body), resolve=True)


def test_defaults_are_the_synthetic_quick_run(tmp_path):
    cfg = compose([], output_dir=str(tmp_path))
    assert cfg.dataset.name == "synthetic"
    assert cfg.model.backbone.name == "resnet18"
    assert cfg.logger.wandb.offline is True
    assert cfg.callbacks.model_checkpoint.monitor == "val/mAP"
    assert cfg.callbacks.last_checkpoint.filename == "last"
    duke = compose(["dataset=duke"], output_dir=str(tmp_path))
    assert duke.dataset.name == "duke" and duke.model.backbone.name == "resnet50"
    # A command-line choice beats the dataset's preferred backbone.
    assert compose(["model/backbone=resnet34"], output_dir=str(tmp_path)).model.backbone.name == "resnet34"


def test_model_loss_and_callbacks_instantiate(tmp_path):
    cfg = compose([], output_dir=str(tmp_path))
    net = instantiate(cfg.model, num_classes=5)
    assert net.global_branch.classifier.out_features == 5
    instantiate(cfg.loss)
    for cb in cfg.callbacks.values():
        instantiate(cb)


def test_wandb_goes_online_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose([], output_dir=str(tmp_path)).logger.wandb.offline is False
    monkeypatch.delenv("WANDB_MODE")
    assert compose([], output_dir=str(tmp_path)).logger.wandb.offline is True


# -- trainer.gpus -------------------------------------------------------------------------------
BASE = {"gpus": 0, "accelerator": "auto", "devices": 1, "strategy": "auto", "sync_batchnorm": False}


def test_gpus_zero_leaves_the_trainer_alone():
    assert trainer_kwargs(BASE, cuda_device_count=lambda: 0) == {k: v for k, v in BASE.items() if k != "gpus"}


def test_gpus_n_maps_to_accelerator_devices_ddp_and_syncbn():
    one = trainer_kwargs({**BASE, "gpus": 1}, cuda_device_count=lambda: 8)
    assert (one["accelerator"], one["devices"], one["strategy"], one["sync_batchnorm"]) == ("gpu", 1, "auto", False)
    four = trainer_kwargs({**BASE, "gpus": 4}, cuda_device_count=lambda: 8)
    assert (four["accelerator"], four["devices"], four["strategy"], four["sync_batchnorm"]) == ("gpu", 4, "ddp", True)
    every = trainer_kwargs({**BASE, "gpus": -1}, cuda_device_count=lambda: 3)
    assert every["devices"] == 3 and every["strategy"] == "ddp"
    # A strategy the user chose is kept.
    assert trainer_kwargs({**BASE, "gpus": 2, "strategy": "ddp_spawn"}, cuda_device_count=lambda: 2)["strategy"] == "ddp_spawn"


def test_too_many_gpus_is_one_clear_error():
    with pytest.raises(UserError, match=r"^trainer.gpus=4 but 0 CUDA devices are visible"):
        trainer_kwargs({**BASE, "gpus": 4}, cuda_device_count=lambda: 0)
    with pytest.raises(UserError, match="trainer.gpus=4 but 2 CUDA devices"):
        trainer_kwargs({**BASE, "gpus": 4}, cuda_device_count=lambda: 2)
    with pytest.raises(UserError, match="not a GPU count"):
        trainer_kwargs({**BASE, "gpus": "two"}, cuda_device_count=lambda: 2)


def _run(args: list[str], cwd, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "magnifier.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_users_gpu_command_prints_config_and_fails_cleanly_without_gpus(tmp_path):
    shown = _run(["dataset=duke", "trainer.gpus=4", "--cfg", "job"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    cfg = OmegaConf.create(shown.stdout)
    assert cfg.dataset.name == "duke" and cfg.trainer.gpus == 4
    # The real run stops before any data is read (there is no Duke data here) with one line.
    run = _run(["dataset=duke", "trainer.gpus=4", f"paths.log_dir={tmp_path}/logs"], cwd=tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert lines == [
        "error: trainer.gpus=4 but 0 CUDA devices are visible; use trainer.gpus=0 or check CUDA_VISIBLE_DEVICES"
    ]


def test_missing_dataset_folder_is_one_line_naming_folder_layout_and_fix(tmp_path):
    run = _run(["dataset=market", f"paths.data_dir={tmp_path}/nowhere", f"paths.log_dir={tmp_path}/logs"], cwd=tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    msg = lines[0]
    assert msg.startswith("error: dataset 'market':")
    assert f"{tmp_path}/nowhere" in msg and "bounding_box_train" in msg
    assert "dataset.root=" in msg and "MAGNIFIER_DATA" in msg


def test_runs_from_any_working_directory(tmp_path):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    shown = _run(["--cfg", "job", "--resolve"], cwd=elsewhere, env_extra={"MAGNIFIER_LOGS": str(tmp_path / "logs")})
    assert shown.returncode == 0, shown.stderr
    cfg = OmegaConf.create(shown.stdout)
    assert cfg.paths.root_dir == str(REPO)


@pytest.mark.parametrize(
    "dataset,milestones,diversity,stage1_epochs,last_epoch,attributes",
    [
        ("market", [40, 70], 0.01, 460, 500, 30),   # configs/market-train.yaml: model_460 -> 500
        ("duke", [40, 70], 0.01, 460, 500, 23),     # no Duke config released: Market's, inferred
        ("cuhk03_labeled", [40], 0.01, 560, 600, 0),    # configs/cuhk-l-train.yaml: model_560 -> 600
        ("cuhk03_detected", [40], 0.001, 560, 600, 0),  # configs/cuhk-d-train.yaml
    ],
)
def test_paper_recipes(dataset, milestones, diversity, stage1_epochs, last_epoch, attributes, tmp_path):
    stage1 = compose([f"experiment={dataset}_paper"], output_dir=str(tmp_path))
    stage2 = compose([f"experiment={dataset}_paper_stage2"], output_dir=str(tmp_path))
    short = compose([f"experiment={dataset}_paper_120"], output_dir=str(tmp_path))
    for cfg in (stage1, stage2, short):
        assert cfg.dataset.name == dataset
        assert (cfg.dataset.height, cfg.dataset.width, cfg.dataset.batch_size, cfg.dataset.num_instances) == (384, 192, 64, 4)
        assert cfg.dataset.erasing_p == 0.5 and cfg.dataset.erasing_fill == "authors"
        assert cfg.dataset.sampler_epoch == "drop"
        assert cfg.model._target_ == "magnifier.models.MagnifierNet"
        assert cfg.model.parsing and cfg.model.srb and cfg.model.sfb and cfg.model.fusion == "lstm"
        assert cfg.model.classifier_bias and cfg.model.parsing_init == "authors"
        assert cfg.model.backbone.name == "resnet50"
        assert (cfg.optim.optimizer.lr, cfg.optim.optimizer.weight_decay) == (3.5e-4, 5e-4)
        assert cfg.optim.scheduler.warmup_epochs == 10 and list(cfg.optim.scheduler.milestones) == milestones
        assert cfg.optim.scheduler.step_at == "start"
        loss = cfg.loss
        assert (loss.id_weight, loss.triplet_weight, loss.label_smoothing, loss.margin) == (1.0, 1.0, 0.1, 0.3)
        assert (loss.parsing_weight, loss.srb_weight, loss.region_weight) == (2.0, 1.0, 0.0125)
        assert (loss.sfb_weight, loss.sfb_triplet_weight) == (1.0, 1.0)
    # Stage 1: from ImageNet, no diversity loss, as long as the authors' checkpoint implies.
    assert stage1.model.backbone.pretrained is True and stage1.loss.diversity_weight == 0
    assert stage1.trainer.max_epochs == stage1_epochs and stage1.optim.scheduler.start_epoch == 0
    assert not stage1.init_required and stage1.init_from is None
    assert stage1.model.attributes == attributes and bool(stage1.dataset.get("attributes")) == bool(attributes)
    # Stage 2: stage 1's weights and optimiser state, the diversity loss, the schedule continued.
    assert stage2.init_required and stage2.init_optimizer and stage2.model.backbone.pretrained is False
    assert stage2.loss.diversity_weight == diversity
    assert stage2.optim.scheduler.start_epoch == stage1_epochs
    assert stage1_epochs + stage2.trainer.max_epochs == last_epoch
    assert stage2.model.attributes == attributes
    # The shorter single-stage variant: 120 epochs, diversity from the start, no attributes.
    assert short.trainer.max_epochs == 120 and short.loss.diversity_weight == diversity
    assert short.model.attributes == 0 and short.dataset.get("attributes") is None and not short.init_required
    if attributes:
        noattr = compose([f"experiment={dataset}_paper_noattr"], output_dir=str(tmp_path))
        assert noattr.model.attributes == 0 and noattr.dataset.attributes is None
        assert noattr.trainer.max_epochs == stage1_epochs


def test_ablation_ladder_configs(tmp_path):
    flags = {}
    for model in ["baseline_parsing", "sab", "sfb", "magnifier"]:
        m = compose([f"model={model}"], output_dir=str(tmp_path)).model
        flags[model] = (m.parsing, m.srb, m.sfb)
    assert flags == {
        "baseline_parsing": (True, False, False),
        "sab": (True, True, False),
        "sfb": (True, False, True),
        "magnifier": (True, True, True),
    }
    assert compose([], output_dir=str(tmp_path)).model._target_ == "magnifier.models.MagnifierNet"
    assert compose(["model=baseline"], output_dir=str(tmp_path)).model._target_ == "magnifier.models.Baseline"


def test_logging_interval_follows_the_device(tmp_path):
    """Per-step logging on the CPU; every 50 steps on GPUs (each read of a logged value syncs the
    device), with the progress bar, the NaN check and the throughput window following it."""
    for overrides, steps in (([], 1), (["trainer=ddp_sim"], 1), (["trainer.gpus=4"], 50), (["trainer=gpu"], 50),
                             (["trainer=ddp"], 50), (["trainer.gpus=4", "trainer.log_every_n_steps=10"], 10)):
        cfg = compose(overrides, output_dir=str(tmp_path))
        assert cfg.trainer.log_every_n_steps == steps, overrides
        assert cfg.callbacks.progress_bar.refresh_rate == steps and cfg.callbacks.nan_guard.check_every_n_steps == steps


def test_cudnn_benchmark_is_on_unless_the_run_is_deterministic(tmp_path):
    """As the authors' training script sets it; deterministic runs keep cuDNN's choice fixed."""
    from magnifier.config import trainer_kwargs

    for overrides, benchmark in (([], True), (["trainer.deterministic=true"], False), (["trainer=gpu"], True),
                                 (["trainer.deterministic=warn"], False), (["trainer.benchmark=false"], False)):
        cfg = compose(overrides, output_dir=str(tmp_path))
        assert cfg.trainer.benchmark is benchmark, overrides
        assert trainer_kwargs(cfg.trainer, cuda_device_count=lambda: 4)["benchmark"] is benchmark


def test_adam_implementation_is_fused_on_cuda_and_foreach_on_the_cpu():
    import torch

    from magnifier.module import optimizer_implementation

    cpu = [torch.zeros(2, requires_grad=True)]
    assert optimizer_implementation("auto", cpu) == "foreach"
    assert optimizer_implementation("fused", cpu) == "fused" and optimizer_implementation("default", cpu) == "default"
    with pytest.raises(UserError, match="optim.implementation=fast"):
        optimizer_implementation("fast", cpu)
    if torch.cuda.is_available():
        assert optimizer_implementation("auto", [torch.zeros(2, device="cuda", requires_grad=True)]) == "fused"


def test_float32_matmul_precision_is_checked_first_and_set_before_the_data(tmp_path, monkeypatch, capsys):
    """TF32 matrix products for training (CUDA only); a bad value is one line before anything
    runs, and the setting is made before the data is read (the missing dataset stops this run
    right after it)."""
    import torch

    from magnifier.train import train

    base = ["dataset=market", f"paths.data_dir={tmp_path}/nowhere", f"paths.log_dir={tmp_path}/logs", "logger=csv"]
    assert compose(base).float32_matmul_precision == "high"
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    with pytest.raises(SystemExit) as exit_:
        train(compose(base + ["float32_matmul_precision=low"], output_dir=str(tmp_path / "a")))
    assert exit_.value.code == 2 and calls == []
    assert capsys.readouterr().err.strip() == "error: float32_matmul_precision=low: use highest, high, medium"
    with pytest.raises(SystemExit):
        train(compose(base + ["float32_matmul_precision=medium"], output_dir=str(tmp_path / "b")))
    assert "nowhere" in capsys.readouterr().err and calls == ["medium"]
