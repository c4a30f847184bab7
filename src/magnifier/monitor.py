"""What a training run shows of itself as it goes: speed and memory, logged beside the losses
(``callbacks.throughput``), the progress bar, and the host round trips of its steps (``debug=syncs``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import TQDMProgressBar


def batch_size(batch: Any) -> int:
    """Images in a batch: the ``image`` tensor's first dimension (or the first tensor's)."""
    if isinstance(batch, dict):
        batch = batch["image"] if "image" in batch else list(batch.values())
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)):
        return next((batch_size(b) for b in batch if isinstance(b, (torch.Tensor, dict, list, tuple))), 0)
    return 0


class ThroughputMonitor(Callback):
    """``train/images_per_s``, ``train/data_ms`` and, on a GPU, ``train/gpu_mem_gb`` every
    ``every_n_steps`` steps.

    images/s: training images per second of wall clock over the window, all processes together
    (one process's count times the world size; DDP's samplers give every process equal batches).
    The clock is read between ``on_train_batch_end`` calls without synchronising the GPU: over a
    window of steps the queued work evens out. A window starts at the first step of each epoch
    and again after a validation, so data-loader start-up and evaluation are left out.

    data_ms: the mean time per step of the window between one step's end and the next one's
    start (``on_train_batch_end`` to ``on_train_batch_start``): waiting for the loader's next
    batch, queueing its copy to the device, and Lightning's own work between steps (the "data
    time" torchreid prints). Over the step time images/s gives, it is the share of a step the
    model does not run in; high when the loader workers do not keep up.

    gpu_mem_gb: the peak memory allocated by tensors on this process's GPU during the window
    (``torch.cuda.max_memory_allocated``, GiB), reset at each window. On the CPU nothing is logged
    for memory; W&B records the process's memory in its system charts itself.

    ``every_n_steps`` null: the trainer's ``log_every_n_steps``.
    """

    def __init__(self, every_n_steps: int | None = None):
        self.every_n_steps = every_n_steps
        self._start: float | None = None
        self._images = 0
        self._steps = 0
        self._data = 0.0  # seconds between steps in the window
        self._ended: float | None = None  # when the last step's on_train_batch_end ran

    def _restart(self) -> None:
        self._start, self._images, self._steps, self._data, self._ended = None, 0, 0, 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._ended is not None:
            self._data += time.perf_counter() - self._ended

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._restart()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._restart()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        cuda = pl_module.device.type == "cuda"
        if self._start is None:  # the window opens after its first step
            self._start = now
            if cuda:
                torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            self._images += batch_size(batch)
            self._steps += 1
            if self._steps >= (self.every_n_steps or trainer.log_every_n_steps):
                self._log(trainer, pl_module, now, cuda)
        self._ended = time.perf_counter()  # after this hook's own work: data_ms leaves it out

    def _log(self, trainer, pl_module, now: float, cuda: bool) -> None:
        metrics = {"train/images_per_s": self._images * trainer.world_size / (now - self._start),
                   "train/data_ms": 1e3 * self._data / self._steps}
        if cuda:
            metrics["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs losses at
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._start, self._images, self._steps, self._data = now, 0, 0, 0.0


class WindowSum:
    """Per-step training values (0-d tensors) added up on their device over a logging window,
    so that a step costs one stack and one add instead of a ``self.log`` call per value
    (about 0.6 ms of Python each on a 2-core CPU) and the values written every
    ``log_every_n_steps`` steps are the window's means, not one step's sample.
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.total: torch.Tensor | None = None  # (V,) float32, on the values' device
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        # One stack (it promotes mixed dtypes) outside autograd, not a detach, reshape and cast
        # per value: on a GPU each dispatched operation is host time of a host-bound step.
        with torch.no_grad():
            try:
                stacked = torch.stack(tuple(values.values())).float()
            except RuntimeError:  # a value that is not 0-d
                stacked = torch.stack([v.reshape(()).float() for v in values.values()])
        if tuple(values) != self.names or self.total is None:  # other values: a new window
            self.names, self.total, self.steps = tuple(values), stacked, 1
        else:
            self.total, self.steps = self.total + stacked, self.steps + 1

    def pop(self) -> tuple[dict[str, torch.Tensor], int]:
        """The window's sums by name (still on the device) and its number of steps; starts a
        new window."""
        sums, steps = dict(zip(self.names, self.total.unbind())) if self.total is not None else {}, self.steps
        self.total, self.steps = None, 0
        return sums, steps


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, showing the training values named in ``show`` (``train/loss``,
    ``train/id_acc``) as read at each refresh only.

    Values logged with ``prog_bar=True`` are turned into Python numbers by Lightning at the end
    of every training step, whatever the bar's ``refresh_rate``: on a GPU one synchronisation
    per value per step. So the module logs them without ``prog_bar`` and the bar reads them from
    ``trainer.callback_metrics`` (still tensors) when it redraws, every ``refresh_rate`` steps.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, show: Sequence[str] = ("train/loss", "train/id_acc")):
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.show = list(show)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if trainer.training:
            logged = trainer.callback_metrics
            items.update({key: float(logged[key]) for key in self.show if key in logged})
        return items


class HostSyncReport(Callback):
    """Audits the first ``steps`` training steps with :class:`magnifier.syncs.HostSyncAudit` and
    prints where the host would wait for a GPU: how many reads each step made, and where
    (``debug=syncs``). A step runs from one ``on_train_batch_start`` to the next, so it holds
    the loss, the backward pass, the optimiser, the logging and the next batch's transfer.
    Validation is not audited (the audit pauses from its start to the next training batch). Costs a Python call per operation while on; audit eager runs
    (``compile=false``). On a CUDA device it also records every call that synchronises the
    device, copies between host and device included (:class:`magnifier.syncs.CudaSyncWatch`),
    which the audit cannot tell from other operations."""

    def __init__(self, steps: int = 60):
        from magnifier.syncs import CudaSyncWatch, HostSyncAudit

        self.steps = steps
        self.audit = HostSyncAudit()
        self.watch = CudaSyncWatch()
        self._seen = 0
        self._state = "idle"  # idle | on | paused | done

    def _set(self, on: bool) -> None:
        if on and self._state in ("idle", "paused"):
            self.audit.__enter__()
            self.watch.__enter__()
            self._state = "on"
        elif not on and self._state == "on":
            self.watch.__exit__(None, None, None)
            self.audit.__exit__(None, None, None)
            self._state = "paused"

    def on_train_start(self, trainer, pl_module) -> None:
        if self.steps > 0:
            self.audit.step = self.watch.step = 0  # what runs before the first batch's hooks (the loop's own checks) counts to it
            self._set(True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._state == "paused":  # the first batch after a validation
            self._set(True)
        if self._state != "on":
            return
        if self._seen == self.steps:
            self._finish(trainer)
            return
        self.audit.step = self.watch.step = self._seen
        self._seen += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        self._set(False)

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._set(False)
        self._state = "done"

    def per_step(self, events=None) -> list[int]:
        """Reads that would wait for a GPU (or ``events``), for each audited step."""
        syncs = self.audit.device_syncs() if events is None else events
        counts = [0] * max(self._seen, 1 + max((e.step for e in syncs), default=-1))
        for event in syncs:
            counts[event.step] += 1
        return counts

    def _finish(self, trainer) -> None:
        if self._state == "done":
            return
        self._set(False)
        self._state = "done"
        if trainer.is_global_zero:
            print(self.report(trainer.log_every_n_steps), flush=True)

    def report(self, log_every_n_steps: int) -> str:
        from collections import Counter

        from magnifier.syncs import summarize

        histogram = Counter(self.per_step())
        device = self.audit.device_syncs()
        host = len(self.audit.events) - len(device)
        lines = [f"host round trips in {self._seen} training steps (magnifier.syncs; log_every_n_steps={log_every_n_steps}):",
                 "  reads per step: " + ", ".join(f"{n} on {k} step(s)" for n, k in sorted(histogram.items()))]
        lines += ["  " + line for line in summarize(device).splitlines()]
        if host:
            lines.append(f"  and {host} read(s) made on the host in a CUDA run too (F.one_hot's range checks, torch.optim's step counters)")
        if self.watch.enabled:
            cuda = Counter(self.per_step(self.watch.events))
            lines.append("  CUDA synchronising calls (set_sync_debug_mode, copies included), per step: "
                         + ", ".join(f"{n} on {k} step(s)" for n, k in sorted(cuda.items())))
            lines += ["  " + line for line in summarize(self.watch.events).splitlines()]
        return "\n".join(lines)
