"""Checkpoint files written in the background (``async_checkpoints``): the file holds the state
at the moment of the save, writes and removals keep their order, readers wait for them, and a
failed write is reported as one line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

import magnifier.resilience as resilience
from magnifier.resilience import AtomicCheckpointIO, CheckpointWriteError, wait_for_checkpoint_writes


@pytest.fixture
def gate(monkeypatch):
    """Holds every background write until ``gate.set()``: the training thread runs on first."""
    event = threading.Event()
    real = resilience.atomic_torch_save

    def held(obj, path):
        assert event.wait(30), "the test never opened the gate"
        real(obj, path)

    monkeypatch.setattr(resilience, "atomic_torch_save", held)
    yield event
    event.set()


def test_the_file_holds_the_state_at_the_save_not_after(tmp_path, gate):
    io = AtomicCheckpointIO(background=True)
    weights = torch.zeros(1000)
    moments = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    checkpoint = {"state_dict": {"w": weights}, "optimizer_states": [moments], "global_step": 7}
    io.save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").exists()  # still held: the save returned before writing
    # The training loop goes on: the weights, Adam's moments and the dict itself change in place.
    weights.add_(1.0)
    moments["state"][0]["exp_avg"].fill_(5.0)
    moments["param_groups"][0]["lr"] = 0.01
    checkpoint["global_step"] = 8
    gate.set()
    io.teardown()
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(saved["state_dict"]["w"], torch.zeros(1000))
    assert torch.equal(saved["optimizer_states"][0]["state"][0]["exp_avg"], torch.zeros(3))
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1 and saved["global_step"] == 7


def test_writes_and_removals_happen_in_the_order_asked(tmp_path, gate):
    io = AtomicCheckpointIO(background=True, max_pending=4)
    io.save_checkpoint({"n": 1}, tmp_path / "last.ckpt")
    io.save_checkpoint({"n": 2}, tmp_path / "last.ckpt")
    io.save_checkpoint({"n": 0}, tmp_path / "best-old.ckpt")
    io.remove_checkpoint(tmp_path / "best-old.ckpt")  # ModelCheckpoint replacing its best file
    gate.set()
    io.wait()
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"n": 2}
    assert not (tmp_path / "best-old.ckpt").exists()  # removed after it was written, not before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_loading_waits_for_the_write(tmp_path, gate):
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint({"n": 3}, tmp_path / "best.ckpt")
    threading.Timer(0.3, gate.set).start()
    assert io.load_checkpoint(tmp_path / "best.ckpt", weights_only=True) == {"n": 3}  # trainer.test(ckpt_path=best)


def test_wait_for_checkpoint_writes_covers_every_writer(tmp_path, gate):
    ios = [AtomicCheckpointIO(background=True) for _ in range(2)]
    for n, io in enumerate(ios):
        io.save_checkpoint({"n": n}, tmp_path / f"{n}.ckpt")
    threading.Timer(0.3, gate.set).start()
    wait_for_checkpoint_writes()  # what the SIGTERM save and W&B's upload call
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.ckpt", "1.ckpt"]


def test_a_save_waits_when_max_pending_snapshots_are_queued(tmp_path, gate):
    io = AtomicCheckpointIO(background=True, max_pending=1)
    io.save_checkpoint({"n": 1}, tmp_path / "a.ckpt")
    second = threading.Thread(target=io.save_checkpoint, args=({"n": 2}, tmp_path / "b.ckpt"))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # holds no second snapshot in memory while the first is queued
    gate.set()
    second.join(30)
    assert not second.is_alive()
    io.teardown()
    assert torch.load(tmp_path / "b.ckpt", weights_only=True) == {"n": 2}


def _unwritable(tmp_path) -> Path:
    """A checkpoint path whose folder is a file: the writer thread's makedirs fails."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    return blocker / "last.ckpt"


def test_a_failed_background_write_is_one_line_at_the_next_save(tmp_path):
    path = _unwritable(tmp_path)
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint({"n": 1}, path)  # returns: the thread finds the problem
    deadline = time.time() + 30
    while io._pending and not io._pending[0][0].done() and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(CheckpointWriteError) as err:
        io.save_checkpoint({"n": 2}, tmp_path / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "async_checkpoints=false" in message
    io.save_checkpoint({"n": 3}, tmp_path / "last.ckpt")  # reported once; later saves go on
    io.teardown()
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"n": 3}


def test_teardown_raises_a_failure_no_save_reported(tmp_path):
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint({"n": 1}, _unwritable(tmp_path))
    with pytest.raises(CheckpointWriteError):
        io.teardown()  # end of fit: the run does not end as if its checkpoint were there
    io.save_checkpoint({"n": 2}, tmp_path / "again.ckpt")  # a later fit or test starts a new thread
    io.teardown()
    assert (tmp_path / "again.ckpt").exists()


def test_foreground_writes_are_unchanged(tmp_path):
    io = AtomicCheckpointIO()
    weights = torch.zeros(4)
    io.save_checkpoint({"w": weights}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], weights)
    assert io._executor is None


@pytest.mark.parametrize("value, kwargs, expected", [
    (True, {"accelerator": "cpu"}, True), (False, {"accelerator": "gpu"}, False),
    ("auto", {"accelerator": "gpu"}, True), ("auto", {"accelerator": "cpu"}, False),
    ("auto", {"accelerator": "auto"}, torch.cuda.is_available()),
])
def test_async_checkpoints_auto_means_on_a_gpu(value, kwargs, expected):
    from magnifier.train import _async_checkpoints

    assert _async_checkpoints(value, kwargs) is expected


def test_a_bad_async_checkpoints_value_is_one_line():
    from magnifier.errors import UserError
    from magnifier.train import _async_checkpoints

    with pytest.raises(UserError, match="async_checkpoints=sometimes: use true, false or auto"):
        _async_checkpoints("sometimes", {})


@pytest.mark.parametrize("log_model, save_top_k, waits", [
    (False, -1, False), (False, 1, False), (True, 1, False), (True, -1, True), ("all", 1, True),
])
def test_wandb_waits_for_the_writer_only_where_it_uploads_at_once(monkeypatch, log_model, save_top_k, waits):
    """W&B uploads a checkpoint at its save with log_model=all (or true and save_top_k=-1), else at
    the end of fit; only then does the upload wait for the background writer."""
    from types import SimpleNamespace

    from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger

    from magnifier.loggers import WandbLogger

    calls = []
    monkeypatch.setattr(resilience, "wait_for_checkpoint_writes", lambda: calls.append(1))
    monkeypatch.setattr(LightningWandbLogger, "after_save_checkpoint", lambda self, cb: None)  # no upload here
    logger = WandbLogger(offline=True, log_model=log_model)
    logger.after_save_checkpoint(SimpleNamespace(monitor="val/mAP", save_top_k=save_top_k))
    assert bool(calls) is waits
