"""Real short training runs through the Hydra entry point (python -m magnifier.train)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from .conftest import tiny_overrides


def _train(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "-m", "magnifier.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _run_dir(log_dir: Path) -> Path:
    runs = sorted((log_dir / "train" / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_short_training_run_evaluates_prints_table_and_keeps_checkpoints_and_wandb_run(tiny_data_dir, tmp_path):
    logs = tmp_path / "logs"
    args = tiny_overrides(tiny_data_dir) + [
        f"paths.log_dir={logs}",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
    ]
    run = _train(args, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    # The closing table: a header and one row of five percentages, then the tested checkpoint,
    # chosen on the validation split.
    m = re.search(r"rank1\s+rank5\s+rank10\s+mAP\s+mINP\n\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\n"
                  r"checkpoint: (\S+) \(selected by val/mAP: its best on the validation split\)", out)
    assert m, out[-2000:]
    r1, r5, r10, mAP, mINP = (float(m.group(i)) for i in range(1, 6))
    assert 0 <= r1 <= r5 <= r10 <= 100 and 0 < mAP <= 100 and 0 < mINP <= 100
    best = Path(m.group(6))
    run_dir = _run_dir(logs)
    assert best.is_file() and best.parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["num_classes"] == 6  # 2 of 8 held out

    # Resume: ckpt_path continues from epoch 2 to 3 instead of starting again.
    logs2 = tmp_path / "logs2"
    resumed = _train(
        tiny_overrides(tiny_data_dir) + [f"paths.log_dir={logs2}", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1",
                                          f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "logger=csv", "test=false"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = torch.load(_run_dir(logs2) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == ckpt["global_step"] * 3 // 2


def test_fast_dev_run_debug_preset(tiny_data_dir, tmp_path):
    run = _train(tiny_overrides(tiny_data_dir) + [f"paths.log_dir={tmp_path}/logs", "debug=fast_dev_run"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


def test_missing_checkpoint_is_a_user_error(tiny_data_dir, tmp_path):
    run = _train(tiny_overrides(tiny_data_dir) + [f"paths.log_dir={tmp_path}/logs", f"ckpt_path={tmp_path}/nope.ckpt"], cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == f"error: ckpt_path={tmp_path}/nope.ckpt: no such checkpoint file"


def test_two_process_ddp_on_cpu(tiny_data_dir, tmp_path):
    run = _train(
        tiny_overrides(tiny_data_dir) + [f"paths.log_dir={tmp_path}/logs", "trainer=ddp_sim", "trainer.max_epochs=1",
                                          "trainer.check_val_every_n_epoch=1", "logger=csv", "dataset.batch_size=8"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank1" in run.stdout
    # The metrics are computed from features gathered on every rank: no advice to reduce them.
    assert "sync_dist=True" not in run.stderr
    assert "Using `DistributedSampler` with the dataloaders" not in run.stderr  # the metric removes padding


MODELS = ["baseline", "baseline_parsing", "sab", "sfb", "magnifier"]
EXPECTED_TERMS = {
    "baseline": {"id", "triplet"},
    "baseline_parsing": {"id", "triplet", "parsing"},
    "sab": {"id", "triplet", "parsing", "srb"},
    "sfb": {"id", "triplet", "parsing", "region", "sfb", "sfb_triplet", "diversity"},
    "magnifier": {"id", "triplet", "parsing", "srb", "region", "sfb", "sfb_triplet", "diversity"},
}


def test_every_ablation_config_builds_and_trains_a_few_steps(tiny_data_dir, tmp_path):
    from magnifier.train import train

    from .conftest import compose

    for model in MODELS:
        out = tmp_path / model
        cfg = compose(
            tiny_overrides(tiny_data_dir)
            + [f"model={model}", "logger=csv", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
               "trainer.check_val_every_n_epoch=1", "test=false", "~callbacks.progress_bar",
               "trainer.enable_model_summary=false"],
            output_dir=str(out),
        )
        metrics = train(cfg)
        logged = {k.split("/", 1)[1] for k in metrics if k.startswith("train/")}
        assert EXPECTED_TERMS[model] <= logged, (model, logged)
        assert not ({"parsing", "srb", "sfb", "diversity"} - EXPECTED_TERMS[model]) & logged, (model, logged)
        assert "val/mAP" in metrics and (out / "checkpoints" / "last.ckpt").is_file()


def test_bf16_mixed_precision_channels_last_and_gt_masks_at_test_train_through_hydra(tiny_data_dir, tmp_path):
    from magnifier.train import train

    from .conftest import compose

    cfg = compose(
        tiny_overrides(tiny_data_dir)
        + ["logger=csv", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1",
           "test=false", "~callbacks.progress_bar", "trainer.precision=bf16-mixed", "channels_last=true",
           "model.gt_masks_at_test=true", "dataset.eval_masks=true"],
        output_dir=str(tmp_path),
    )
    metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("train/"))
    assert 0 < metrics["val/mAP"] <= 1


def test_a_broken_training_image_does_not_end_the_run(tiny_data_dir, tmp_path):
    import shutil

    from magnifier.train import train

    from .conftest import compose

    shutil.copytree(tiny_data_dir / "synthetic", tmp_path / "data" / "synthetic")
    victim = sorted((tmp_path / "data" / "synthetic" / "bounding_box_train").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])
    overrides = [o for o in tiny_overrides(tiny_data_dir) if not o.startswith("paths.data_dir")]
    cfg = compose(
        overrides + [f"paths.data_dir={tmp_path / 'data'}", "logger=csv", "trainer.max_epochs=1", "test=false",
                     "trainer.check_val_every_n_epoch=1", "~callbacks.progress_bar"],
        output_dir=str(tmp_path / "out"),
    )
    metrics = train(cfg)
    assert "train/bad_images" in metrics and "val/mAP" in metrics


def test_short_training_run_on_a_market_layout_fixture_with_label_maps(tiny_data_dir, tmp_path):
    import shutil

    from magnifier.train import train

    from .conftest import compose

    # The synthetic set is written in the Market-1501 layout and naming: copied under the official
    # folder name, the Market reader must take it as it is.
    shutil.copytree(tiny_data_dir / "synthetic", tmp_path / "data" / "Market-1501-v15.09.15")
    cfg = compose(
        [f"paths.data_dir={tmp_path / 'data'}", "dataset=market", "dataset.height=64", "dataset.width=32",
         "dataset.batch_size=16", "dataset.num_workers=0", "model/backbone=resnet18", "logger=csv",
         "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "test=false", "~callbacks.progress_bar"],
        output_dir=str(tmp_path / "out"),
    )
    metrics = train(cfg)
    assert metrics["train/parsing"] > 0 and 0 < metrics["val/mAP"] <= 1
