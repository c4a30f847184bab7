"""Shared fixtures: a tiny synthetic dataset and Hydra config composition."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small enough to train for a few steps in seconds on 2 CPU cores.
TINY = dict(num_ids=16, num_cams=3, images_per_cam=2, height=64, width=32, seed=0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data folder holding ``synthetic/`` built with :data:`TINY` parameters."""
    from magnifier.data import synthetic

    root = tmp_path_factory.mktemp("data")
    synthetic.generate(root / "synthetic", **TINY, processes=1)
    return root


def tiny_overrides(data_dir: Path) -> list[str]:
    """Hydra overrides that train on the tiny dataset quickly."""
    overrides = [
        f"paths.data_dir={data_dir}",
        "dataset.height=64",
        "dataset.width=32",
        "dataset.batch_size=16",
        "dataset.num_instances=4",
        "dataset.num_workers=0",
        "dataset.test_batch_size=32",
    ]
    overrides += [f"dataset.synthetic.{k}={v}" for k, v in TINY.items()]
    return overrides


def compose(overrides: list[str] | None = None, output_dir: str | None = None, config_name: str = "train"):
    """``conf/<config_name>.yaml`` composed as the entry point would (the public
    :func:`magnifier.config.compose_config`)."""
    from magnifier.config import compose_config

    return compose_config(config_name, overrides, output_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data_dir, tmp_path_factory) -> Path:
    """``last.ckpt`` of a real two-step training run (MagnifierNet, ResNet-18, tiny data)."""
    from magnifier.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    overrides = tiny_overrides(tiny_data_dir) + [
        f"paths.log_dir={out / 'logs'}",
        "logger=csv",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "test=false",
    ]
    train(compose(overrides, output_dir=str(out)))
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt
