"""Host time per step that the Lightning loop and this project's callbacks add to a bare loop.

On a GPU the MagnifierNet step is bound by the host (README "Training speed on a GPU": 12 to
17 ms of kernels in a 28 to 50 ms step), so every millisecond of Python the loop spends per
step is a millisecond of step time. A one-layer model keeps the step's own work small, so
that the loop's cost shows; the same model and batches run three ways in one process:

* ``bare``: forward, loss, ``zero_grad``, backward, Adam step in a Python loop;
* ``lightning``: ``pl.Trainer`` with no callback, logger or progress bar;
* ``magnifier``: ``pl.Trainer`` with the callbacks of ``conf/callbacks/default.yaml`` (at a GPU
  preset's ``log_every_n_steps=50``), the CSV logger, the progress bar and the
  ``AtomicCheckpointIO`` plugin, and a module that logs like ``ReIDModule`` (12 values added up
  on the device, written every 50 steps).

Reports each one's median step (from the step-to-step clock, after ``--warmup``; median of
``--repeats`` runs, alternating) and, with ``--profile``, the simple profiler's mean time of
each callback hook per step in the ``magnifier`` run, largest first.

Usage: python benchmarks/loop_overhead.py [--steps 400] [--repeats 3] [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from magnifier.monitor import WindowSum  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from throughput import machine  # noqa: E402

VALUES = 12  # ReIDModule logs 11 loss terms and the ID accuracy


def batches(steps: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(16, 32, generator=g), "pid": torch.arange(4).repeat_interleave(4)}
            for _ in range(steps)]


class Tiny(pl.LightningModule):
    """One linear layer that logs as ReIDModule does (monitor.WindowSum, every logging step)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(32, 8)
        self.window = WindowSum()

    def training_step(self, batch, batch_idx):
        logits = self.layer(batch["image"])
        loss = torch.nn.functional.cross_entropy(logits, batch["pid"])
        values = {f"term{i}": loss * (i + 1) for i in range(VALUES - 2)}
        values["loss"] = loss
        values["id_acc"] = (logits.argmax(1) == batch["pid"]).float().mean()
        self.window.add(values)
        if self.trainer._logger_connector.should_update_logs:
            sums, steps = self.window.pop()
            for name, total in sums.items():
                self.log(f"train/{name}", total / steps, batch_size=len(logits))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, foreach=True)


class Clock(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.times.append(time.perf_counter())


def bare_ms(data: list[dict], warmup: int) -> float:
    model = Tiny()
    opt = model.configure_optimizers()
    times = []
    for batch in data:
        times.append(time.perf_counter())
        loss = torch.nn.functional.cross_entropy(model.layer(batch["image"]), batch["pid"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    gaps = [b - a for a, b in zip(times, times[1:])][warmup:]
    return 1e3 * statistics.median(gaps)


def project_callbacks(output_dir: str) -> list[pl.Callback]:
    from hydra.utils import instantiate

    from magnifier.config import compose_config

    cfg = compose_config("train", ["trainer.log_every_n_steps=50", "logger=csv"], output_dir)
    return [instantiate(c) for c in cfg.callbacks.values()]


def lightning_ms(data: list[dict], warmup: int, project: bool, profile: bool = False) -> tuple[float, list[dict]]:
    from magnifier.resilience import AtomicCheckpointIO

    clock = Clock()
    loader = torch.utils.data.DataLoader(data, batch_size=None)  # the batches as they are
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(accelerator="cpu", devices=1, max_steps=len(data), max_epochs=1, enable_model_summary=False,
                      log_every_n_steps=50, default_root_dir=tmp, num_sanity_val_steps=0)
        if project:
            kwargs.update(callbacks=[clock, *project_callbacks(tmp)], logger=pl.loggers.CSVLogger(tmp),
                          plugins=[AtomicCheckpointIO(background=True)], profiler="simple" if profile else None)
        else:
            kwargs.update(callbacks=[clock], logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer = pl.Trainer(**kwargs)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # the progress bar
            trainer.fit(Tiny(), loader)
        actions = []
        if profile:
            from train_speed import profiler_actions

            actions = profiler_actions(trainer.profiler.summary())
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])][warmup:]
    return 1e3 * statistics.median(gaps), actions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also a profiled run: each callback hook's mean")
    p.add_argument("--json")
    args = p.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = batches(args.steps)
    runs: dict[str, list[float]] = {"bare": [], "lightning": [], "magnifier": []}
    for _ in range(args.repeats):  # alternating, so that drift hits all alike
        runs["bare"].append(bare_ms(data, args.warmup))
        runs["lightning"].append(lightning_ms(data, args.warmup, project=False)[0])
        runs["magnifier"].append(lightning_ms(data, args.warmup, project=True)[0])
    ms = {k: statistics.median(v) for k, v in runs.items()}
    result = {"machine": machine(), "steps": args.steps, "repeats": args.repeats, "step_ms": ms, "runs_ms": runs,
              "lightning_loop_ms": ms["lightning"] - ms["bare"], "project_callbacks_ms": ms["magnifier"] - ms["lightning"]}
    print(f"{result['machine']}; one linear layer, batch 16, {args.steps} steps, median of {args.repeats} runs")
    for name, value in ms.items():
        print(f"  {name:10s} {value:7.3f} ms per step")
    print(f"  Lightning's loop adds {result['lightning_loop_ms']:.3f} ms per step; this project's callbacks, logger "
          f"and plugin {result['project_callbacks_ms']:.3f} ms more")
    if args.profile:
        _, actions = lightning_ms(data, args.warmup, project=True, profile=True)
        hooks = [dict(a, per_step_ms=1e3 * a["total_s"] / args.steps) for a in actions if a["action"].startswith("[")]
        hooks.sort(key=lambda a: -a["per_step_ms"])
        result["hooks"] = hooks[:20]
        print("  callback and module hooks, ms per step (simple profiler, its own cost included):")
        for a in hooks[:12]:
            print(f"    {a['per_step_ms']:7.3f}  {a['action'][:110]}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
