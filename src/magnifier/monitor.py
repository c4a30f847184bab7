"""Training speed and memory, logged beside the losses (``callbacks.throughput``)."""

from __future__ import annotations

import time
from typing import Any

import torch
from pytorch_lightning import Callback


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
    """``train/images_per_s`` and, on a GPU, ``train/gpu_mem_gb`` every ``every_n_steps`` steps.

    images/s: training images per second of wall clock over the window, all processes together
    (one process's count times the world size; DDP's samplers give every process equal batches).
    The clock is read between ``on_train_batch_end`` calls without synchronising the GPU: over a
    window of steps the queued work evens out. A window starts at the first step of each epoch
    and again after a validation, so data-loader start-up and evaluation are left out.

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

    def _restart(self) -> None:
        self._start, self._images, self._steps = None, 0, 0

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
            return
        self._images += batch_size(batch)
        self._steps += 1
        if self._steps < (self.every_n_steps or trainer.log_every_n_steps):
            return
        metrics = {"train/images_per_s": self._images * trainer.world_size / (now - self._start)}
        if cuda:
            metrics["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs losses at
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._start, self._images, self._steps = now, 0, 0
