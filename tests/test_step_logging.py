"""The training values reach the logger as their mean over each logging window, added up on
the device between the steps that write them (monitor.WindowSum), instead of a ``self.log``
call per value per step."""

from __future__ import annotations

import csv

import pytest
import torch

from magnifier.monitor import WindowSum

from .conftest import DispatchedOps, fit_tiny_steps


def test_window_sum_adds_steps_and_starts_again():
    window = WindowSum()
    assert window.pop() == ({}, 0)
    for step in range(3):
        window.add({"loss": torch.tensor(float(step)), "acc": torch.tensor(0.5, dtype=torch.float64)})
    sums, steps = window.pop()
    assert steps == 3 and set(sums) == {"loss", "acc"}
    assert sums["loss"].item() == 3.0 and sums["acc"].item() == 1.5 and sums["acc"].dtype == torch.float32
    assert window.pop() == ({}, 0)  # popped: a new window
    window.add({"loss": torch.tensor(1.0)})
    window.add({"loss": torch.tensor(2.0), "bad_images": torch.tensor(1)})  # other names: the window restarts
    sums, steps = window.pop()
    assert steps == 1 and sums["loss"].item() == 2.0 and sums["bad_images"].item() == 1.0


def test_window_sum_adds_a_step_in_few_operations():
    """A step's 12 values cost one stack and one add (and nothing of autograd's), not a detach,
    reshape and cast each: on a GPU every dispatched operation is host time."""
    weight = torch.ones((), requires_grad=True)
    values = {f"term{i}": weight * i for i in range(11)}
    values["bad_images"] = torch.tensor(2)  # an integer count among the float losses
    window = WindowSum()
    window.add(values)
    with DispatchedOps() as count:
        window.add(values)
    assert len(count.names) <= 3, count.names
    sums, steps = window.pop()
    assert steps == 2 and not sums["term3"].requires_grad and sums["term3"].item() == 6.0
    assert sums["bad_images"].item() == 4.0 and sums["bad_images"].dtype == torch.float32


def test_logged_training_values_are_the_means_of_their_window(tiny_data_dir, tmp_path):
    """log_every_n_steps=4 over 9 steps of 6-step epochs: a window closes at each logging step,
    epoch end and the run's end; Lightning writes the windows that close at its logging steps
    (its steps 3 and 7: steps 1-4, and 7-8 after the epoch's end closed 5-6), each the mean of
    the steps in it."""
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    steps, every = 9, 4
    losses, _, module, _ = fit_tiny_steps(tiny_data_dir, tmp_path / "run", steps=steps,
                                          trainer_kwargs=dict(logger=logger, log_every_n_steps=every))
    per_epoch = module.trainer.num_training_batches
    assert per_epoch == 6  # the tiny set at batch 8: windows closed by the epoch's end are exercised
    written, window = {}, []
    for i, loss in enumerate(losses):
        window.append(loss)
        if (i + 1) % every == 0 or (i + 1) % per_epoch == 0 or i + 1 == steps:
            if (i + 1) % every == 0:
                written[i] = sum(window) / len(window)
            window = []
    assert sorted(written) == [3, 7] and len(losses) == steps
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [3, 7]
    for row in rows:
        assert float(row["train/loss"]) == pytest.approx(written[int(row["step"])], rel=1e-6)
        assert 0.0 <= float(row["train/id_acc"]) <= 1.0 and row["train/triplet"]
    # The run's last step closed a window too: its values are in the callback metrics.
    assert module.trainer.callback_metrics["train/loss"].item() == pytest.approx(losses[-1], rel=1e-6)
