"""optim.scale_lr: the learning rate scaled linearly with the global batch (off by default)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from magnifier.errors import UserError
from magnifier.module import ReIDModule, linear_scaled_lr

from .conftest import compose, tiny_overrides

BASE_LR = 3.5e-4


def test_linear_scaled_lr_is_base_lr_times_global_over_reference_batch():
    assert linear_scaled_lr(BASE_LR, 64, 64) == BASE_LR
    assert linear_scaled_lr(BASE_LR, 256, 64) == pytest.approx(4 * BASE_LR, rel=1e-12)
    assert linear_scaled_lr(BASE_LR, 16, 64) == pytest.approx(BASE_LR / 4, rel=1e-12)
    assert linear_scaled_lr(1e-3, 96, 32.0) == pytest.approx(3e-3, rel=1e-12)


@pytest.mark.parametrize("reference", [0, -64, None, "64", True])
def test_a_reference_batch_that_is_not_positive_is_a_user_error(reference):
    with pytest.raises(UserError, match=r"optim.scale_lr=true needs optim.reference_batch > 0") as err:
        linear_scaled_lr(BASE_LR, 64, reference)
    assert "\n" not in str(err.value)


def test_the_configs_default_is_off_with_the_papers_reference_batch():
    cfg = compose()
    assert cfg.optim.scale_lr is False and cfg.optim.reference_batch == 64
    assert cfg.optim.optimizer.lr == BASE_LR


def _module(scale_lr: bool, reference_batch=64) -> ReIDModule:
    cfg = compose(["model/backbone=resnet18", f"optim.scale_lr={str(scale_lr).lower()}",
                   f"optim.reference_batch={reference_batch}"])
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    return ReIDModule(net=OmegaConf.to_container(cfg.model, resolve=True),
                      loss=OmegaConf.to_container(cfg.loss, resolve=True), optim=optim, num_classes=8)


class _Logger:
    def __init__(self):
        self.params: dict = {}

    def log_hyperparams(self, params):
        self.params.update(params)


@pytest.mark.parametrize("scale_lr, world_size, expected", [(False, 8, BASE_LR), (True, 1, BASE_LR / 4),
                                                            (True, 8, 2 * BASE_LR)])
def test_world_size_enters_the_global_batch(scale_lr, world_size, expected, caplog):
    """16 images per process x world_size processes against the reference batch of 64."""
    module = _module(scale_lr)
    logger = _Logger()
    module.trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=16), world_size=world_size, loggers=[logger])
    with caplog.at_level(logging.INFO, logger="magnifier.module"):
        optimizer = module.configure_optimizers()["optimizer"]
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([expected] * len(optimizer.param_groups),
                                                                              rel=1e-12)
    if scale_lr:
        assert logger.params == {"optim/effective_lr": pytest.approx(expected, rel=1e-12),
                                 "optim/global_batch": 16 * world_size}
        lines = [r.getMessage() for r in caplog.records if "optim.scale_lr" in r.getMessage()]
        assert len(lines) == 1 and f"global batch {16 * world_size}" in lines[0] and "reference batch 64" in lines[0]
    else:
        assert logger.params == {} and not caplog.records


def test_scale_lr_with_a_bad_reference_batch_fails_before_training():
    module = _module(True, reference_batch=0)
    module.trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=16), world_size=1, loggers=[])
    with pytest.raises(UserError, match="optim.reference_batch > 0"):
        module.configure_optimizers()


@pytest.mark.parametrize("scale_lr", [False, True])
def test_a_real_training_step_runs_at_the_scaled_lr(scale_lr, tiny_data_dir, tmp_path):
    """ReIDModule, the tiny data module (batch 16) and a one-step Trainer: lr 3.5e-4 x 16 / 64
    with scale_lr, 3.5e-4 without; the CSV logger's hyperparameters carry the effective lr."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.loggers import CSVLogger

    cfg = compose(tiny_overrides(tiny_data_dir) + ["model/backbone=resnet18", f"optim.scale_lr={str(scale_lr).lower()}"])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.load()
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "loss", "optim")}
    module = ReIDModule(net=parts["model"], loss=parts["loss"], optim=parts["optim"])
    logger = CSVLogger(str(tmp_path), name="run")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    expected = BASE_LR * 16 / 64 if scale_lr else BASE_LR
    assert trainer.global_step == 1
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(expected, rel=1e-12)
    hparams = OmegaConf.load(tmp_path / "run" / "version_0" / "hparams.yaml")
    if scale_lr:
        assert hparams["optim/effective_lr"] == pytest.approx(expected, rel=1e-12)
        assert hparams["optim/global_batch"] == 16
    else:
        assert "optim/effective_lr" not in hparams
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["train/loss"].item()))
