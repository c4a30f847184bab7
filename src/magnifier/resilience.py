"""Runs that lose nothing: atomic checkpoints, a save on SIGTERM (and on the SLURM launcher's
pre-emption signal, followed by a requeue), the run's random state and W&B run id in every
checkpoint, and a stop with one line when the loss turns NaN.

What each piece guards against:

* :class:`AtomicCheckpointIO` (a Lightning CheckpointIO plugin): a kill while a checkpoint is
  written. The file is written under a temporary name, flushed to disk (fsync) and renamed over
  the old one, so ``last.ckpt`` is always either the previous checkpoint or the new one. With
  ``background=True`` (``async_checkpoints``, on by default when training on a GPU) the state
  is copied to host memory and training goes on while a thread writes it; anything that reads
  the files waits for the writes first (:func:`wait_for_checkpoint_writes`).
* :class:`TimedCheckpoint`: a kill late in a long epoch. ``last.ckpt`` is also saved every
  ``train_time_interval`` within an epoch, with the clock read every few steps only.
* :class:`CheckpointOnSignal`: SIGTERM, which SLURM sends before pre-emption or at the time
  limit. Lightning turns it into a ``SIGTERMException`` at the next batch, on every rank at the
  same batch; this callback then saves ``last.ckpt`` (all ranks take part, as in any save). Under
  Hydra's submitit launcher, the pre-emption signal (USR2) goes the same way, after which
  submitit requeues the job; the requeued job finds ``last.ckpt`` in its own folder and resumes.
* :class:`RunState`: a resumed run that differs from the one it continues. Every checkpoint
  holds the random states (PyTorch, CUDA, NumPy, Python) as they were when it was saved, and
  they are put back just before the first batch after the resume; with the resumable training
  loader (``magnifier.data.datamodule.ResumableLoader``) the resumed run sees the same batches
  and augmentations, and with ``trainer.deterministic=true`` ends with the same weights as a run
  that was never stopped. It also keeps the W&B run id, so the resumed run continues the same
  dashboard run.
* :class:`StopOnNonFiniteLoss`: training on garbage. A loss that is NaN or infinite stops the
  run before the update, naming the term, the step and the checkpoint kept.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from magnifier.errors import UserError

log = logging.getLogger(__name__)

#: Exit status of a run stopped by SIGTERM after saving (128 + SIGTERM, the shell convention).
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


# -- atomic checkpoint files ---------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    Leftover temporary files of earlier, killed saves of the same file are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class CheckpointWriteError(UserError):
    """A checkpoint file could not be written (disk full, permissions, a vanished folder)."""


def host_snapshot(checkpoint: Any) -> Any:
    """``checkpoint`` with every tensor copied to host memory and every dict/list rebuilt: what a
    background write may serialise while training goes on changing the weights, Adam's moments
    and the loop counters in place. A GPU tensor's copy waits for the kernels before it, so the
    snapshot holds the state of the step the checkpoint names."""
    return apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))


#: Every AtomicCheckpointIO of this process, for :func:`wait_for_checkpoint_writes`.
_WRITERS: "weakref.WeakSet[AtomicCheckpointIO]" = weakref.WeakSet()


def wait_for_checkpoint_writes() -> None:
    """Block until every checkpoint file this process has handed to a background writer is on
    disk (renamed into place), and raise :class:`CheckpointWriteError` if one failed. Called
    before anything reads the files: a resume or test load, W&B's upload, the SIGTERM exit."""
    for writer in list(_WRITERS):
        writer.wait()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with local files replaced atomically (see module doc).
    Remote paths (``s3://`` and the like) keep Lightning's own writer.

    Args:
        background: write local files in a thread: ``save_checkpoint`` takes a host copy of the
            state (:func:`host_snapshot`) and returns, so the training loop does not wait for the
            serialisation, the fsync and the rename (1.0 s per epoch-end ``last.ckpt`` of
            MagnifierNet ResNet-50 with Adam's state on the H200 machine). Files are written and
            removed in the order asked, one at a time. Loading, ``teardown`` (end of fit or
            test, also after an exception) and :func:`wait_for_checkpoint_writes` wait for them.
        max_pending: at most this many snapshots waiting or being written (host memory: one
            snapshot is the size of the checkpoint); a further save waits for the oldest.
    """

    def __init__(self, background: bool = False, max_pending: int = 2) -> None:
        super().__init__()
        if int(max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.background = bool(background)
        self.max_pending = int(max_pending)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Future, str]] = []
        self._error: CheckpointWriteError | None = None  # set and read by the training thread only
        _WRITERS.add(self)

    # -- the writer thread ---------------------------------------------------------------------
    def _submit(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        for entry in [e for e in self._pending if e[0].done()]:
            self._finish(entry)  # a write that failed since the last save is reported now
        self._raise_failed()
        while len(self._pending) >= self.max_pending:
            self._finish(self._pending[0])
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending.append((self._executor.submit(fn, *args), what))

    def _finish(self, entry: tuple[Future, str]) -> None:
        future, what = entry
        try:
            future.result()
        except Exception as err:  # noqa: BLE001 - reported as one line at the next save or wait
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            if self._error is None:
                self._error = CheckpointWriteError(
                    f"could not write checkpoint {what}: {first}; check the disk space and permissions "
                    "of the run folder (async_checkpoints=false writes in the training loop)")
        finally:
            if entry in self._pending:
                self._pending.remove(entry)

    def _raise_failed(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def wait(self) -> None:
        """Every write and removal asked so far done; raise the first that failed."""
        while self._pending:
            self._finish(self._pending[0])
        self._raise_failed()

    # -- CheckpointIO --------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            self.wait()
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        if not self.background:
            atomic_torch_save(checkpoint, path)
            return
        self._submit(str(path), atomic_torch_save, host_snapshot(checkpoint), path)

    def remove_checkpoint(self, path) -> None:
        if self.background and self._pending:  # after the writes asked before it (maybe of this file)
            self._submit(f"{path} (removal)", super().remove_checkpoint, path)
        else:
            super().remove_checkpoint(path)

    def load_checkpoint(self, path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()  # the file may still be on its way (``trainer.test(ckpt_path=best)`` after fit)
        return super().load_checkpoint(path, *args, **kwargs)

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


class TimedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose clock (``train_time_interval``) is read every
    ``check_every_n_steps`` training steps instead of every step.

    ModelCheckpoint broadcasts rank 0's "is it time?" answer at every step once
    ``train_time_interval`` is set, so that all ranks save together. Under DDP that is
    ``broadcast_object_list`` each step: two collectives, and with NCCL a copy to the GPU and
    back (a synchronisation). Reading the clock every ``check_every_n_steps`` steps (the
    logging interval: 50 on GPUs) makes a save at most that many steps late. Every rank skips
    the same steps (``global_step`` is the same on all), so no rank waits in a broadcast the
    others skip. With ``every_n_train_steps`` set, or ``check_every_n_steps`` 1, it is
    ModelCheckpoint itself.
    """

    def __init__(self, *args, check_every_n_steps: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if check_every_n_steps < 1:
            raise UserError(f"check_every_n_steps={check_every_n_steps}: use 1 or more (steps between clock reads)")
        self.check_every_n_steps = check_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (self._train_time_interval is not None and self._every_n_train_steps < 1
                and trainer.global_step % self.check_every_n_steps != 0):
            return  # not a step that reads the clock: no broadcast
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


# -- random state and W&B run id -----------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """The random states a training step draws from: PyTorch (CPU and every CUDA device),
    NumPy's global generator and Python's ``random``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # Tensors and plain numbers only: checkpoints are read weights-only, which refuses NumPy arrays.
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _wandb_id(trainer: pl.Trainer) -> str | None:
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return str(logger.version) if logger.version else None
    return None


class RunState(Callback):
    """Saves the random state and the W&B run id with every checkpoint; on resume, restores the
    random state just before the first training batch (after the loaders have started, so that
    nothing in between draws from it)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self.wandb_id: str | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        return {"rng": capture_rng(), "wandb_id": _wandb_id(trainer) if trainer is not None else self.wandb_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")
        self.wandb_id = state_dict.get("wandb_id")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None


def wandb_id_from_checkpoint(ckpt: dict[str, Any]) -> str | None:
    """The W&B run id a checkpoint was saved from (by :class:`RunState`), if any."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("RunState") and isinstance(state, dict):
            return state.get("wandb_id")
    return None


# -- SIGTERM and pre-emption ---------------------------------------------------------------------
class CheckpointOnSignal(Callback):
    """On SIGTERM during training: save ``<dirpath>/<filename>.ckpt`` at the next batch boundary,
    then let the run stop (see module doc). Under the submitit launcher, USR2 (pre-emption or the
    time limit) does the same and then hands over to submitit, which requeues the job.

    Args:
        dirpath: the run's checkpoint folder.
        filename: the checkpoint's name without ``.ckpt`` (``last``, which a resume reads).
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.saved: Path | None = None
        self._requeue: tuple[Any, ...] | None = None
        self._previous_usr2: Any = None

    def on_train_start(self, trainer, pl_module) -> None:
        # submitit installs its requeue handler on USR2 before the job runs (SUBMITIT_EXECUTOR
        # names the executor); route the signal through Lightning's SIGTERM handling first.
        handler = signal.getsignal(signal.SIGUSR2)
        if os.environ.get("SUBMITIT_EXECUTOR") and callable(handler):
            self._previous_usr2 = handler
            signal.signal(signal.SIGUSR2, self._on_usr2)

    def _on_usr2(self, signum, frame) -> None:
        self._requeue = (signum, frame)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops every rank at the same batch

    def _restore_usr2(self) -> None:
        if self._previous_usr2 is not None:
            signal.signal(signal.SIGUSR2, self._previous_usr2)
            self._previous_usr2 = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_usr2()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.path)
        wait_for_checkpoint_writes()  # on disk before the message, the exit or submitit's requeue
        self.saved = self.path
        if trainer.is_global_zero:
            print(f"SIGTERM: saved {self.path} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                  f"continue with ckpt_path={self.path}", flush=True)
        requeue, self._requeue = self._requeue, None
        previous = self._previous_usr2
        self._restore_usr2()
        if requeue is not None and previous is not None:
            previous(*requeue)  # submitit: requeue this job (rank 0) and exit


# -- NaN ------------------------------------------------------------------------------------------
class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; raised before the update is applied."""


def newest_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The newest checkpoint file the run's ModelCheckpoint callbacks have written, if any."""
    paths = []
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            paths += [Path(p) for p in (cb.best_model_path, cb.last_model_path) if p]
    existing = [p for p in paths if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


class StopOnNonFiniteLoss(Callback):
    """Stop training at a NaN or infinite loss, with one line: the first step whose loss was not
    finite, the terms, and the last good checkpoint.

    The loss's finiteness is recorded on the device every step (no synchronisation); it is read
    every ``check_every_n_steps`` steps and before every checkpoint is written, so a checkpoint
    never holds weights updated from a NaN loss. With ``check_every_n_steps=1`` (the CPU
    default: ``trainer.log_every_n_steps``) the run stops before that update is applied; with
    50 (GPU presets) within 50 steps. Under DDP the ranks agree before stopping.
    ``trainer.detect_anomaly=true`` remains the tool to find the operation that produced it.

    Args:
        check_every_n_steps: how often the recorded flag is read (one device-to-host copy).
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if int(check_every_n_steps) < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = int(check_every_n_steps)
        # Global step of the first non-finite loss, NO_BAD_STEP while there is none.
        self._first_bad: torch.Tensor | None = None

    #: What the recorded step holds while every loss was finite (above any real step).
    NO_BAD_STEP = 2**62

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), self.NO_BAD_STEP, dtype=torch.long, device=loss.device)
        # Four kernels a step, no read: x - x is 0 exactly when x is finite (inf - inf and NaN
        # give NaN; torch.isfinite is four operations itself); this step's number where the
        # loss is not finite, else the sentinel; the smaller of that and the record (steps only
        # grow: the first stays).
        value = loss.detach()
        this = torch.where((value - value) == 0, self.NO_BAD_STEP, trainer.global_step)
        self._first_bad = torch.minimum(self._first_bad, this)
        if (trainer.global_step + 1) % self.check_every_n_steps == 0:
            self._check(trainer, pl_module, loss)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":  # any save while fitting, after validation too
            self._check(trainer, pl_module, None)

    def _check(self, trainer, pl_module, loss: torch.Tensor | None) -> None:
        if self._first_bad is None:
            return
        first = int(self._first_bad)  # the one synchronisation
        bad = first != self.NO_BAD_STEP
        first = first if bad else -1
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        try:  # the checkpoint named below is on disk, not still being written
            wait_for_checkpoint_writes()
        except CheckpointWriteError as err:
            log.warning("%s", err)
        terms = getattr(pl_module, "last_terms", None) or {}
        named = [f"train/{k}={float(v.detach().float().sum()):g}" for k, v in terms.items()
                 if torch.is_tensor(v) and not math.isfinite(float(v.detach().float().sum()))]
        what = ", ".join(named) if named else "on another rank"
        kept = newest_checkpoint(trainer)
        where = f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved yet"
        if first == trainer.global_step and loss is not None:
            when = f"at step {first} (epoch {trainer.current_epoch}): {what}; training stopped before this update"
        else:
            when = (f"first at step {first if first >= 0 else '?'} (found at step {trainer.global_step}, epoch "
                    f"{trainer.current_epoch}; now {what}); training stopped")
        raise NonFiniteLossError(
            f"non-finite loss {when} and {where}; lower optim.optimizer.lr or a loss weight, or find the "
            "operation with trainer.detect_anomaly=true"
        )
