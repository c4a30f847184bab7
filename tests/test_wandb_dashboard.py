"""W&B dashboards per sweep, read back from the offline runs' own files (``run-*.wandb``).

A two-run multirun (baseline, magnifier) and an evaluation of its best checkpoint; each offline
run is decoded record by record and must hold the group, job type, flat config, per-term losses,
learning rate, rank-1/mAP/mINP, images/s, the checkpoint artifact, ranked lists and the table.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger

from .conftest import tiny_overrides

BLOCK = 32768  # a .wandb file is a LevelDB-style log: 32 KiB blocks of chunked records


def read_records(path: Path):
    """The protobuf ``Record``s of an offline run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path  # header: ident, magic, version (7 bytes)
    pos, parts = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or kind == 0:  # the tail of a block too short for a chunk header: padding
            pos += left
            continue
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _set_items(target: dict, items) -> None:
    """Put history or summary items into ``target``; a logged dict (an image, a table) comes
    key by key."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        place = target
        for key in path[:-1]:
            place = place.setdefault(key, {})
        place[path[-1]] = json.loads(item.value_json)


def read_run(folder: Path) -> dict:
    """What one offline run holds: run record, config, history rows, summary, artifacts, files."""
    (path,) = folder.glob("run-*.wandb")
    run = {"config": {}, "history": [], "summary": {}, "artifacts": [], "files": set()}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["run"] = record.run
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            row: dict = {}
            _set_items(row, record.history.item)
            run["history"].append(row)
        elif kind == "summary":  # updates: the last value of each key wins
            _set_items(run["summary"], record.summary.update)
        elif kind == "artifact":
            run["artifacts"].append(record.artifact)
        elif kind == "files":
            run["files"] |= {f.path for f in record.files.files}
    run["keys"] = {k for row in run["history"] for k in row}
    return run


def _env(tmp: Path) -> dict:
    # Artifacts are staged (copied) under WANDB_DATA_DIR until synced: keep them in the test's folder.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "WANDB_DATA_DIR": str(tmp / "wandb_data")}


def _run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=_env(cwd), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def sweep(tiny_data_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """``python -m magnifier.train -m model=baseline,magnifier``: one epoch of two steps each."""
    tmp = tmp_path_factory.mktemp("sweep")
    _run("magnifier.train", ["-m", "model=baseline,magnifier"] + tiny_overrides(tiny_data_dir) + [
        f"paths.log_dir={tmp / 'logs'}", "logger=wandb", "logger.wandb.log_model=true", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1",
        "test=false", "~callbacks.progress_bar", "trainer.enable_model_summary=false",
        "async_checkpoints=true"], cwd=tmp)  # the GPU default: the upload waits for the background write
    (sweep_dir,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    runs = []
    for job in ("0", "1"):
        (folder,) = (sweep_dir / job / "wandb").glob("offline-run-*")
        runs.append({**read_run(folder), "dir": sweep_dir / job})
    return sweep_dir, runs


LOSS_TERMS = {"baseline": {"id", "triplet"},
              "magnifier": {"id", "triplet", "parsing", "srb", "region", "sfb", "sfb_triplet", "diversity"}}


@pytest.mark.multiprocess
def test_sweep_runs_share_a_group_and_log_config_losses_lr_metrics_speed_and_best_checkpoint(sweep):
    sweep_dir, runs = sweep
    for model, run in zip(("baseline", "magnifier"), runs):
        # Group: the sweep (task and folder name), the same for both; job type: the model.
        assert run["run"].run_group == f"train-{sweep_dir.name}"
        assert run["run"].job_type == model
        assert run["run"].display_name == f"{model}-{run['dir'].name}"

        # The config is flat: one key per leaf, "/"-joined, with values as given.
        config = {k: v for k, v in run["config"].items() if not k.startswith("_")}
        assert config["optim/optimizer/lr"] == pytest.approx(3.5e-4)
        assert config["model/backbone/name"] == "resnet18" and config["dataset/batch_size"] == 16
        assert not any(isinstance(v, dict) for v in config.values())

        keys = run["keys"]
        assert {f"train/{t}" for t in LOSS_TERMS[model] | {"loss"}} <= keys, keys
        assert "lr-Adam" in keys
        assert {"val/rank1", "val/mAP", "val/mINP"} <= keys
        speeds = [row["train/images_per_s"] for row in run["history"] if "train/images_per_s" in row]
        assert speeds and all(s > 0 for s in speeds)
        assert "train/gpu_mem_gb" not in keys  # CPU run

        # log_model=true: the best checkpoint (by val/mAP), not last.ckpt, recorded as an artifact.
        (artifact,) = run["artifacts"]
        assert artifact.type == "model" and {"best", "latest"} <= set(artifact.aliases)
        meta = json.loads(artifact.metadata)
        best = next((run["dir"] / "checkpoints").glob("best-*.ckpt"))
        assert meta["original_filename"] == best.name and meta["ModelCheckpoint"]["monitor"] == "val/mAP"
        assert [entry.path for entry in artifact.manifest.contents] == ["model.ckpt"]


@pytest.mark.multiprocess
def test_evaluation_run_holds_the_ranked_lists_and_the_per_query_table(sweep, tiny_data_dir):
    sweep_dir, runs = sweep
    best = next((runs[0]["dir"] / "checkpoints").glob("best-*.ckpt"))
    out = sweep_dir.parent.parent / "eval"
    _run("magnifier.evaluate", tiny_overrides(tiny_data_dir) + [
        f"ckpt_path={best}", f"hydra.run.dir={out}", "logger=wandb", "eval.ranked_lists.worst=2",
        "eval.ranked_lists.best=1"], cwd=sweep_dir.parent.parent)
    (folder,) = (out / "wandb").glob("offline-run-*")
    run = read_run(folder)
    assert run["run"].job_type == "evaluate" and run["run"].run_group == ""

    (lists,) = [row["ranked_lists"] for row in run["history"] if "ranked_lists" in row]
    assert lists["_type"] == "images/separated" and lists["count"] == 3
    assert lists["captions"] == ["worst01", "worst02", "best01"]
    assert set(lists["filenames"]) <= run["files"]
    (table,) = [row["per_query"] for row in run["history"] if "per_query" in row]
    queries = len(list((tiny_data_dir / "synthetic" / "query").glob("*.jpg")))
    assert table["_type"] == "table-file" and table["nrows"] == queries and table["ncols"] == 6
    assert table["path"] in run["files"]
    assert {"plain/rank1", "plain/mAP", "plain/mINP"} <= run["keys"]


def test_run_identity_of_a_single_run_a_sweep_job_and_a_plain_script(monkeypatch):
    from types import SimpleNamespace

    from hydra.types import RunMode

    from magnifier import loggers

    def job(mode, num=0):
        return SimpleNamespace(mode=mode, sweep=SimpleNamespace(dir="logs/train/multiruns/2024-05-01_12-00-00"),
                               job=SimpleNamespace(name="train", num=num),
                               runtime=SimpleNamespace(choices={"model": "sfb"}))

    assert loggers.run_identity("train", job(RunMode.RUN)) == {"group": None, "job_type": "sfb", "name": None}
    assert loggers.run_identity("train", job(RunMode.MULTIRUN, 3)) == {
        "group": "train-2024-05-01_12-00-00", "job_type": "sfb", "name": "sfb-3"}
    assert loggers.run_identity("evaluate", job(RunMode.MULTIRUN, 1))["job_type"] == "evaluate"
    monkeypatch.setattr(loggers, "_hydra_job", lambda: None)
    assert loggers.run_identity("evaluate") == {"group": None, "job_type": "evaluate", "name": None}


class Recorder(Logger):
    """A Lightning logger that keeps what it is given."""

    name, version = "recorder", 0

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
def test_throughput_monitor_logs_images_per_s_per_window_and_peak_gpu_memory_on_a_gpu(accelerator):
    from magnifier.monitor import ThroughputMonitor

    if accelerator == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 4)

        def training_step(self, batch, batch_idx):
            return self.layer(batch["image"]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    images = torch.randn(40, 32)
    loader = torch.utils.data.DataLoader([{"image": x} for x in images], batch_size=8)
    recorder = Recorder()
    trainer = pl.Trainer(accelerator="gpu" if accelerator == "cuda" else "cpu", devices=1, max_epochs=1,
                         logger=recorder, callbacks=[ThroughputMonitor(every_n_steps=2)], log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), loader)
    rows = [(step, m) for step, m in recorder.rows if "train/images_per_s" in m]
    # Five steps: the first opens the window, then one row every two steps, at Lightning's step.
    assert [step for step, _ in rows] == [2, 4]
    assert all(m["train/images_per_s"] > 0 for _, m in rows)
    if accelerator == "cuda":
        assert all(0 < m["train/gpu_mem_gb"] < 1 for _, m in rows)
    else:
        assert all("train/gpu_mem_gb" not in m for _, m in rows)


def test_throughput_monitor_data_ms_is_the_wait_for_the_next_batch():
    """``train/data_ms``: a loader that takes 30 ms per batch shows at least 30 ms of data time per
    step, one that takes nothing much less; the model's 100 ms step is in neither (the bounds
    leave a loaded machine 70 ms of slack, since only a wrong interval comes near them)."""
    import time

    from magnifier.monitor import ThroughputMonitor

    class Slow(torch.utils.data.Dataset):
        def __init__(self, delay: float):
            self.delay = delay

        def __len__(self):
            return 48

        def __getitem__(self, i):
            if i % 8 == 0:  # once per batch of 8
                time.sleep(self.delay)
            return {"image": torch.randn(32)}

    class SlowStep(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 4)

        def training_step(self, batch, batch_idx):
            time.sleep(0.1)  # the model's own time, which data_ms must leave out
            return self.layer(batch["image"]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def data_ms(delay: float) -> list[float]:
        recorder = Recorder()
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=recorder,
                             callbacks=[ThroughputMonitor(every_n_steps=2)], log_every_n_steps=1,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(SlowStep(), torch.utils.data.DataLoader(Slow(delay), batch_size=8))
        return [m["train/data_ms"] for _, m in recorder.rows if "train/data_ms" in m]

    slow, fast = data_ms(0.03), data_ms(0.0)
    assert len(slow) == len(fast) == 2  # six steps: the first opens the window, then every two
    assert all(30 <= ms < 100 for ms in slow), slow
    assert all(ms < 30 for ms in fast), fast
