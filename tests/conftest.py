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
        "dataset.val_split=none",  # all 8 training identities: an 8-class checkpoint
    ]
    train(compose(overrides, output_dir=str(out)))
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def fit_tiny_steps(data_dir: Path, root: Path, overrides: list[str] = (), steps: int = 3,
                   trainer_kwargs: dict | None = None, **module_kwargs):
    """Train ``steps`` steps of MagnifierNet (ResNet-18, batch 8) on the tiny dataset in this
    process, seeded as a run is (``trainer_kwargs`` override the Trainer's). Returns (per-step
    losses, the image dtypes the steps received after the batch transfer, the trained module,
    the data module)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from magnifier.module import ReIDModule

    class Seen(pl.Callback):
        def __init__(self):
            self.losses: list[float] = []
            self.dtypes: set = set()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.dtypes.add(batch["image"].dtype)  # after on_after_batch_transfer

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    # Every training identity (no validation runs here: limit_val_batches=0), so 6 steps an epoch.
    cfg = compose(tiny_overrides(data_dir) + ["model/backbone=resnet18", "dataset.batch_size=8", "dataset.val_split=none",
                                              *overrides])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.load()
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "loss", "optim")}
    pl.seed_everything(0)
    module = ReIDModule(net=parts["model"], loss=parts["loss"], optim=parts["optim"], **module_kwargs)
    seen = Seen()
    kwargs = dict(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[seen], default_root_dir=str(root))
    trainer = pl.Trainer(**{**kwargs, **(trainer_kwargs or {})})
    trainer.fit(module, datamodule=datamodule)
    return seen.losses, seen.dtypes, module, datamodule


class DispatchedOps:
    """``with DispatchedOps() as ops:``: the ATen operations dispatched inside, by name
    (``ops.names``). On a GPU each is host time of a host-bound training step."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        names = self.names = []

        class _Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                names.append(str(func))
                return func(*args, **(kwargs or {}))

        self._mode = _Record()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
