"""Nothing lost: kills from outside (SIGKILL mid-epoch, during a save), SIGTERM, NaN losses,
and resumes that end exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from magnifier.resilience import atomic_torch_save, capture_rng, restore_rng
from magnifier.resume import resolve_checkpoint

from .conftest import tiny_overrides

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "magnifier.train", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magnifier.train", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _wait_for_saves(proc: subprocess.Popen, pattern: str, root: Path, saves: int, timeout: float = 600) -> Path:
    """Poll until the checkpoint matching ``pattern`` under ``root`` has been replaced ``saves``
    times (each atomic save is a new file: an inode and a modification time; the inode alone is
    not enough, as the file system may give the next save the inode the last one freed, and a
    run then looked as if it had saved twice at most); returns its path."""
    seen, deadline = set(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in root.glob(pattern):
            try:
                stat = path.stat()
                seen.add((stat.st_ino, stat.st_mtime_ns))
            except FileNotFoundError:
                continue
            if len(seen) >= saves:
                return path
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended before {saves} saves:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {saves} saves of {pattern} within {timeout} s")


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


# -- unit level -----------------------------------------------------------------------------------
def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    atomic_torch_save({"rng": state}, tmp_path / "s.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def half_then_crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


SAVER = textwrap.dedent("""
    import sys, torch
    from magnifier.resilience import atomic_torch_save
    path, n = sys.argv[1], 0
    while True:
        n += 1
        # about 64 MB, so that a kill often lands in the middle of a write
        atomic_torch_save({"n": n, "w": torch.full((16_000_000,), float(n))}, path)
        print(n, flush=True)
""")


def test_sigkill_during_saves_never_leaves_a_broken_file(tmp_path):
    """A process that keeps rewriting a large checkpoint is killed at random moments: the file
    always loads, and holds one whole save."""
    path = tmp_path / "last.ckpt"
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    mid_write = 0
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], env=ENV, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one save done: the process is saving again
        time.sleep(delay)
        proc.kill()
        proc.wait()
        mid_write += any(path.parent.glob(".last.ckpt.*.tmp"))  # killed while writing
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["w"].shape == (16_000_000,) and bool((ckpt["w"] == ckpt["n"]).all())
    assert mid_write > 0, "no kill landed during a write: the test did not test anything"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_nan_guard_records_the_first_non_finite_step_without_a_read(bad):
    from types import SimpleNamespace

    from magnifier.resilience import StopOnNonFiniteLoss

    guard = StopOnNonFiniteLoss(check_every_n_steps=1000)  # recorded only, never read here
    for step, value in enumerate([1.0, 2.0, bad, 3.0, bad, 1e30]):
        guard.on_before_backward(SimpleNamespace(global_step=step), None, torch.tensor(value, requires_grad=True) * 1)
    assert int(guard._first_bad) == 2
    clean = StopOnNonFiniteLoss(check_every_n_steps=1000)
    for step in range(3):
        clean.on_before_backward(SimpleNamespace(global_step=step), None, torch.tensor(3.0e38) * 1)
    assert int(clean._first_bad) == StopOnNonFiniteLoss.NO_BAD_STEP  # large but finite


def test_resume_resolution(tmp_path):
    logs = tmp_path / "logs" / "train"
    old = logs / "runs" / "a"
    (old / ".hydra").mkdir(parents=True)
    (old / ".hydra" / "overrides.yaml").write_text("- seed=1\n- resume=auto\n")
    (old / "checkpoints").mkdir()
    (old / "checkpoints" / "last.ckpt").write_bytes(b"x")
    other = logs / "multiruns" / "s" / "0"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "last.ckpt").write_bytes(b"x")
    new = logs / "runs" / "b"
    assert resolve_checkpoint(None, "own", new, logs, ["seed=1"]) == (None, "")
    assert resolve_checkpoint(None, "auto", new, logs, ["seed=1", "ckpt_path=x"])[0] == str(old / "checkpoints" / "last.ckpt")
    assert resolve_checkpoint("last", "own", new, logs, ["seed=2"])[0] == str(other / "checkpoints" / "last.ckpt")
    assert resolve_checkpoint(None, "auto", new, logs, ["seed=3"])[0] is None
    from magnifier.errors import UserError

    with pytest.raises(UserError, match="ckpt_path=last: no earlier run of this config"):
        resolve_checkpoint("last", "own", new, logs, ["seed=3"])
    with pytest.raises(UserError, match="resume=sometimes"):
        resolve_checkpoint(None, "sometimes", new, logs, [])
    # A run started again in its own folder (a requeued job) continues from there.
    assert resolve_checkpoint(None, "own", old, logs, [])[0] == str(old / "checkpoints" / "last.ckpt")
    assert resolve_checkpoint(None, "never", old, logs, [])[0] is None


# -- whole runs ------------------------------------------------------------------------------------
def _recipe(data_dir: Path, logs: Path) -> list[str]:
    # Batch 8 = 2 identities x 4 images: several steps per epoch, so a kill lands mid-epoch.
    return tiny_overrides(data_dir) + [
        f"paths.log_dir={logs}", "dataset.batch_size=8", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1",
        "trainer.deterministic=true", "test=false", "~callbacks.progress_bar",
        "callbacks.step_checkpoint.every_n_train_steps=1", "callbacks.step_checkpoint.train_time_interval=null",
        # The GPU default: files written in the background (resilience.AtomicCheckpointIO).
        "async_checkpoints=true",
    ]


# Every step's checkpoint kept (step004.ckpt, ...) besides last.ckpt; saving reads the run, it
# changes nothing that the run computes.
KEEP_STEPS = ["callbacks.step_checkpoint.filename='step{step:03d}'", "callbacks.step_checkpoint.save_top_k=-1",
              "+callbacks.step_checkpoint.auto_insert_metric_name=false"]


@pytest.fixture(scope="module")
def straight_run(tiny_data_dir, tmp_path_factory) -> Path:
    """The uninterrupted run: 3 epochs of 4 steps (6 training identities, 2 held out for
    validation), a checkpoint after every step."""
    logs = tmp_path_factory.mktemp("straight")
    done = _run(_recipe(tiny_data_dir, logs) + KEEP_STEPS)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(logs.glob("train/runs/*/checkpoints"))


def _same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def test_resume_from_the_last_batch_of_an_epoch_ends_like_an_uninterrupted_run(straight_run, tiny_data_dir, tmp_path):
    """The step checkpoint of an epoch's last batch is written before that epoch's validation;
    the resumed run validates, then trains on as the uninterrupted run did (a validation loader
    that drew from the global random state shifted every later step)."""
    ckpt = straight_run / "step004.ckpt"
    progress = torch.load(ckpt, map_location="cpu", weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["current"]["ready"] == 4 and progress["current"]["completed"] == 3  # before the epoch's end
    resumed = _run(_recipe(tiny_data_dir, tmp_path) + [f"ckpt_path='{ckpt}'"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt_c = next(tmp_path.glob("train/runs/*/checkpoints/last.ckpt"))
    _same_weights(torch.load(straight_run / "last.ckpt", map_location="cpu", weights_only=True),
                  torch.load(ckpt_c, map_location="cpu", weights_only=True))


def test_sigkill_mid_epoch_then_ckpt_path_last_ends_like_an_uninterrupted_run(straight_run, tiny_data_dir, tmp_path):
    ckpt_a = torch.load(straight_run / "last.ckpt", map_location="cpu", weights_only=True)

    logs_b = tmp_path / "b"
    proc = _start(_recipe(tiny_data_dir, logs_b))
    saved = _wait_for_saves(proc, "train/runs/*/checkpoints/last.ckpt", logs_b, saves=4)
    os.killpg(proc.pid, signal.SIGKILL)  # from outside, whatever it is doing
    proc.communicate()
    killed_at = torch.load(saved, map_location="cpu", weights_only=True)
    assert 0 < killed_at["global_step"] < ckpt_a["global_step"]
    wandb_b = {p.name.rsplit("-", 1)[-1] for p in logs_b.glob("train/runs/*/wandb/offline-run-*")}

    resumed = _run(_recipe(tiny_data_dir, logs_b) + ["ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the newest run of the same config from" in resumed.stdout
    runs_b = sorted(logs_b.glob("train/runs/*"))
    assert len(runs_b) == 2
    _same_weights(ckpt_a, torch.load(runs_b[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True))
    # The resumed run continued the same W&B run.
    wandb_c = {p.name.rsplit("-", 1)[-1] for p in runs_b[-1].glob("wandb/offline-run-*")}
    assert wandb_c == wandb_b and len(wandb_c) == 1


def test_sigterm_saves_last_ckpt_and_exits_143(tiny_data_dir, tmp_path):
    proc = _start(_recipe(tiny_data_dir, tmp_path) + ["logger=csv"])
    _wait_for_saves(proc, "train/runs/*/checkpoints/last.ckpt", tmp_path, saves=2)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("SIGTERM: saved "))
    ckpt = Path(line.split()[2])
    step = int(line.split(" at step ")[1].split()[0])
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == step
    import json

    result = json.loads((ckpt.parent.parent / "metrics.json").read_text())
    assert result["status"] == "stopped"


@pytest.mark.parametrize("every", [1, 3])
def test_nan_loss_stops_naming_term_step_and_checkpoint(tiny_data_dir, tmp_path, monkeypatch, capsys, every):
    """Read every step, the run stops before the NaN update; read every 3 steps (no per-step
    synchronisation), it stops at the next read or checkpoint save, and nothing after the NaN
    was saved either way."""
    from magnifier import train as train_mod
    from magnifier.losses import ReIDLoss

    from .conftest import compose

    calls = {"n": 0}
    original = ReIDLoss.forward

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the fourth step's triplet term
            terms["triplet"] = terms["triplet"] * float("nan")
            terms["loss"] = terms["loss"] + terms["triplet"]
        return terms

    monkeypatch.setattr(ReIDLoss, "forward", poisoned)
    cfg = compose(_recipe(tiny_data_dir, tmp_path / "logs") + ["logger=csv", f"callbacks.nan_guard.check_every_n_steps={every}"],
                  output_dir=str(tmp_path / "run"))
    with pytest.raises(SystemExit) as stop:
        train_mod.train(cfg)
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if every == 1:
        assert line.startswith("error: non-finite loss at step 3 ") and "train/triplet=nan" in line
        assert "stopped before this update" in line
    else:
        assert line.startswith("error: non-finite loss first at step 3 (found at step 4")
    assert f"the last good checkpoint is {last}" in line
    kept = torch.load(last, map_location="cpu", weights_only=True)
    assert kept["global_step"] == 3  # nothing was saved after the NaN
    assert all(bool(torch.isfinite(t).all()) for t in kept["state_dict"].values() if t.is_floating_point())


def test_detect_anomaly_stays_a_trainer_option(tmp_path):
    import pytorch_lightning as pl

    from magnifier.config import trainer_kwargs

    from .conftest import compose

    kwargs = trainer_kwargs(compose(["trainer.detect_anomaly=true"], output_dir=str(tmp_path)).trainer)
    assert kwargs["detect_anomaly"] is True
    assert pl.Trainer(**{**kwargs, "logger": False, "enable_checkpointing": False}).lightning_module is None


def test_the_timed_checkpoint_reads_its_clock_every_few_steps_only(tiny_data_dir, tmp_path):
    """ModelCheckpoint with train_time_interval broadcasts rank 0's clock every step (a
    collective and, with NCCL, a GPU synchronisation); TimedCheckpoint every
    check_every_n_steps steps, and still saves when the interval has passed (0 s here)."""
    from datetime import timedelta

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from magnifier.errors import UserError
    from magnifier.resilience import TimedCheckpoint

    from .conftest import fit_tiny_steps

    class CountBroadcasts(pl.Callback):
        def __init__(self):
            self.steps: list[int] = []

        def on_train_start(self, trainer, pl_module):
            broadcast = trainer.strategy.broadcast

            def counted(obj, src=0):
                self.steps.append(trainer.global_step)
                return broadcast(obj, src)

            trainer.strategy.broadcast = counted

    seen = {}
    for name, checkpoint in (
        ("lightning", ModelCheckpoint(dirpath=tmp_path / "a", filename="last", train_time_interval=timedelta(0))),
        ("timed", TimedCheckpoint(dirpath=tmp_path / "b", filename="last", train_time_interval=timedelta(0),
                                  check_every_n_steps=3)),
    ):
        counter = CountBroadcasts()
        fit_tiny_steps(tiny_data_dir, tmp_path / name, steps=5,
                       trainer_kwargs=dict(callbacks=[counter, checkpoint], enable_checkpointing=True))
        seen[name] = counter.steps
    assert seen["lightning"] == [1, 2, 3, 4, 5]  # after each step's update
    assert seen["timed"] == [3]
    saved = torch.load(tmp_path / "b" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] >= 3  # the interval had passed at step 3: saved then (or at the end)
    with pytest.raises(UserError, match="check_every_n_steps=0"):
        TimedCheckpoint(dirpath=tmp_path, check_every_n_steps=0)
