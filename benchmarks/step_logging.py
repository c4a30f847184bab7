"""Host time a training step spends logging its values, in a real Lightning loop.

A tiny LightningModule (one linear layer, so that the step's own work is small beside the
logging) trains for ``--steps`` steps in each of two ways, in the same run:

* ``per step``: one ``self.log`` call per value each step (what ReIDModule did before, with
  its 12 values: the loss terms and the ID accuracy);
* ``window``: the values stacked and added up on the device each step (monitor.WindowSum),
  ``self.log`` called only at the steps Lightning writes (every ``--every`` steps), as
  ReIDModule does now.

Reports the median wall time per step of each (from the step-to-step clock, after
``--warmup``) and their difference, which is the logging's host cost per step.

Usage: python benchmarks/step_logging.py [--values 12] [--steps 300] [--every 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch

from magnifier.monitor import WindowSum


class Tiny(pl.LightningModule):
    def __init__(self, values: int, window: bool):
        super().__init__()
        self.layer = torch.nn.Linear(32, 8)
        self.values, self.window = values, WindowSum() if window else None

    def training_step(self, batch, batch_idx):
        out = self.layer(batch[0])
        loss = out.square().mean()
        values = {f"term{i}": loss * (i + 1) for i in range(self.values)}
        if self.window is None:
            for name, value in values.items():
                self.log(f"train/{name}", value.detach(), batch_size=len(out))
        else:
            self.window.add(values)
            if self.trainer._logger_connector.should_update_logs:
                sums, steps = self.window.pop()
                for name, total in sums.items():
                    self.log(f"train/{name}", total / steps, batch_size=len(out))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Clock(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.times.append(time.perf_counter())


def per_step_ms(window: bool, values: int, steps: int, every: int, warmup: int) -> float:
    data = torch.utils.data.TensorDataset(torch.randn(steps * 4, 32))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        logger = pl.loggers.CSVLogger(tmp)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger, log_every_n_steps=every,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[clock], default_root_dir=tmp)
        trainer.fit(Tiny(values, window), loader)
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])][warmup:]
    return 1e3 * statistics.median(gaps)


def add_cost_us(values: int, calls: int = 2000) -> tuple[float, float]:
    """Host time of one window step for ``values`` values that carry autograd history: as
    WindowSum.add did before (detach, reshape and cast each value, then stack) and as it does
    now (one stack outside autograd); median of 5 batches of ``calls`` calls, in microseconds."""
    weight = torch.ones((), requires_grad=True)
    terms = {f"term{i}": weight * (i + 1) for i in range(values)}

    def before() -> torch.Tensor:
        return torch.stack([v.detach().reshape(()).float() for v in terms.values()])

    def now() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(tuple(terms.values())).float()

    out = []
    for fn in (before, now):
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - t0) / calls)
        out.append(1e6 * statistics.median(runs))
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--values", type=int, default=12)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"{args.values} values, {args.steps} steps, log_every_n_steps={args.every}, median of {args.repeats} runs")
    results: dict[str, list[float]] = {"per step": [], "window": []}
    for _ in range(args.repeats):  # alternating, so that drift hits both alike
        for name in results:
            results[name].append(per_step_ms(name == "window", args.values, args.steps, args.every, args.warmup))
    per_step, window = (statistics.median(results[k]) for k in ("per step", "window"))
    print(f"  self.log per value per step   {per_step:6.2f} ms per step")
    print(f"  added up on the device        {window:6.2f} ms per step")
    print(f"  logging's host cost saved     {per_step - window:6.2f} ms per step ({per_step / window:.2f}x)")
    before, now = add_cost_us(args.values)
    print(f"  the window's stack of {args.values} values: {before:.1f} us with a detach, reshape and cast per value, "
          f"{now:.1f} us as one stack outside autograd")


if __name__ == "__main__":
    main()
