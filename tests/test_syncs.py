"""Host round trips (magnifier.syncs): the audit sees each kind of read the host makes of a
device value, MagnifierNet's training step makes none, and neither does the Lightning loop
between the steps that log."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magnifier.losses import ReIDLoss
from magnifier.models import Baseline, MagnifierNet
from magnifier.monitor import HostSyncReport
from magnifier.syncs import HostSyncAudit

from .conftest import compose, tiny_overrides

X = torch.arange(18.0).reshape(6, 3) - 8
MASK = X[:, 0] > 0
LABELS = torch.tensor([0, 2, 1, 1])

READS = {  # each makes the host wait for a CUDA device: the op the audit names
    "item": (lambda: X.sum().item(), "_local_scalar_dense"),
    "bool": (lambda: bool(X[0, 0] > 0), "_local_scalar_dense"),
    "int": (lambda: int(LABELS[0]), "_local_scalar_dense"),
    "if": (lambda: 1 if (X > 0).any() else 0, "_local_scalar_dense"),
    "mask index": (lambda: X[MASK], "index"),
    "mask assignment": (lambda: X.clone().__setitem__(MASK, 0.0), "index_put_"),
    "nonzero": (lambda: MASK.nonzero(), "nonzero"),
    "where(c)": (lambda: torch.where(MASK), "nonzero"),
    "argwhere": (lambda: torch.argwhere(MASK), "nonzero"),
    "unique": (lambda: torch.unique(LABELS), "_unique2"),
    "bincount": (lambda: torch.bincount(LABELS), "bincount"),
    "repeat_interleave(repeats)": (lambda: torch.repeat_interleave(LABELS), "repeat_interleave"),
    "repeat_interleave(x, repeats)": (lambda: X.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]), dim=0),
                                      "repeat_interleave"),
    "masked_select": (lambda: X.masked_select(X > 0), "masked_select"),
    "equal": (lambda: torch.equal(X, X), "equal"),
    "allclose": (lambda: torch.allclose(X, X), "allclose"),
}
NO_READS = {  # the same work without a round trip
    "long index": lambda: X[LABELS],
    "where(c, a, b)": lambda: torch.where(MASK[:, None], X, 0.0),
    "masked_fill": lambda: X.masked_fill(X > 0, 0.0),
    "repeat_interleave(x, int)": lambda: X.repeat_interleave(2, dim=0),
    "repeat_interleave with output_size": lambda: X.repeat_interleave(torch.ones(6, dtype=torch.long), dim=0,
                                                                      output_size=6),
    "reductions": lambda: (X.sum(), X.amax(1), X.argmax(1), (X > 0).any()),
    "scatter_reduce": lambda: torch.zeros(3).scatter_reduce(0, LABELS[:3], X[0], reduce="amax"),
}


@pytest.mark.parametrize("name", READS)
def test_the_audit_names_each_kind_of_host_read(name):
    fn, op = READS[name]
    with HostSyncAudit() as audit:
        fn()
    assert [e.op for e in audit.device_syncs()] == [op]
    assert "/test_syncs.py:" in audit.device_syncs()[0].where  # the line that asked, not torch's


@pytest.mark.parametrize("name", NO_READS)
def test_the_audit_passes_work_without_a_host_read(name):
    with HostSyncAudit() as audit:
        NO_READS[name]()
    assert audit.events == []


def test_one_hot_range_checks_and_optimizer_step_counters_are_host_only():
    with HostSyncAudit() as audit:
        F.one_hot(LABELS, 3)
    assert [e.op for e in audit.events] == ["_local_scalar_dense"] * 2  # its min and max checks, on the CPU only
    assert audit.device_syncs() == []
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1, foreach=True)
    weight.grad = torch.ones(3)
    with HostSyncAudit() as audit:
        optimizer.step()
    assert audit.events and audit.device_syncs() == []  # the step counter, kept on the host
    with HostSyncAudit() as audit:
        weight.sum().item()  # a read outside torch.optim still counts
    assert len(audit.device_syncs()) == 1
    assert "test_syncs.py" in audit.summary() and "1 x _local_scalar_dense" in audit.summary()


PAPER_LOSS = dict(parsing_weight=2.0, srb_weight=1.0, region_weight=0.0125, sfb_weight=1.0, sfb_triplet_weight=1.0,
                  diversity_weight=0.01, attribute_weight=1.0)


@pytest.mark.parametrize("model,adam", [("magnifier", "foreach"), ("magnifier", "fused"), ("attributes", "foreach"),
                                        ("baseline", "foreach")])
def test_a_training_step_reads_nothing_back_from_the_device(model, adam):
    """Forward, every loss term, backward and Adam: no operation that would wait for a GPU
    (the issue's 'no .item(), .cpu() or data-dependent branch in the step', on the CPU)."""
    torch.manual_seed(0)
    n, h, w = 8, 64, 32
    if model == "baseline":
        net = Baseline(4, backbone="resnet18")
    else:
        net = MagnifierNet(4, backbone="resnet18", attributes=30 if model == "attributes" else 0)
    criterion = ReIDLoss(**PAPER_LOSS)
    optimizer = torch.optim.Adam(net.parameters(), lr=3.5e-4, **{adam: True})
    images, masks = torch.randn(n, 3, h, w), torch.randint(0, 8, (n, h, w))
    pids = torch.arange(n // 2).repeat_interleave(2)
    attributes = (torch.rand(n, 30) > 0.5).float() if model == "attributes" else None
    for step in range(2):  # the second step: the optimiser's state exists
        with HostSyncAudit() as audit:
            terms = criterion(net(images, masks), pids, attributes)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
        assert audit.device_syncs() == [], audit.summary()
    if model != "baseline":
        assert any(e.cpu_only for e in audit.events)  # the audit was on: F.one_hot's CPU checks


class _Report(HostSyncReport):
    """HostSyncReport that keeps itself and the shape of each audited step for the test."""

    made: list["_Report"] = []

    def __init__(self, steps: int):
        super().__init__(steps)
        self.kinds: list[str] = []
        _Report.made.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._state == "on" and self._seen < self.steps:
            logs = (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % trainer.log_every_n_steps == 0
            last = batch_idx + 1 == trainer.num_training_batches
            self.kinds.append("log" if logs else "last" if last else "plain")
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def test_the_lightning_loop_reads_nothing_back_between_the_steps_that_log(tiny_data_dir, tmp_path, capfd):
    """The real callbacks and logging of ``python -m magnifier.train`` with a GPU preset's
    interval (5 here): a step that neither logs nor ends an epoch makes no host round trip.
    Lightning turns every value logged with ``prog_bar=True`` into a number at the end of every
    step; before monitor.ProgressBar, that was 2 reads a step (loss and id_acc)."""
    from magnifier.train import train

    _Report.made.clear()
    overrides = tiny_overrides(tiny_data_dir) + [
        "model/backbone=resnet18", f"paths.log_dir={tmp_path / 'logs'}", "logger=csv", "trainer.log_every_n_steps=5",
        "debug=syncs", "callbacks.sync_audit._target_=tests.test_syncs._Report", "callbacks.sync_audit.steps=8",
        "trainer.max_epochs=3", "trainer.limit_train_batches=null", "dataset.val_split=none"]
    train(compose(overrides, output_dir=str(tmp_path / "run")))
    (report,) = _Report.made
    reads, kinds = report.per_step(), report.kinds
    assert len(reads) == len(kinds) == 8 and kinds.count("plain") >= 4 and "log" in kinds, kinds
    assert [r for r, k in zip(reads, kinds) if k == "plain"] == [0] * kinds.count("plain"), list(zip(reads, kinds))
    assert all(r > 0 for r, k in zip(reads, kinds) if k == "log")  # the control: logging reads, and is seen
    out = capfd.readouterr()
    assert "host round trips in 8 training steps" in out.out and "reads per step: 0 on" in out.out
    assert "train/loss=" in out.out and "train/id_acc=" in out.out  # the bar still shows them, at its refreshes


def test_the_report_counts_reads_before_the_first_batch_to_the_first_step(capsys):
    """Lightning's DDP loop reads rank 0's SIGTERM flag before each batch's hooks: the first such
    read comes before any on_train_batch_start and belongs to step 0."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(is_global_zero=True, log_every_n_steps=5, training=True)
    report = HostSyncReport(steps=2)
    report.on_train_start(trainer, None)
    torch.ones(1).sum().item()  # before the first batch
    for _ in range(2):
        report.on_train_batch_start(trainer, None, None, 0)
        torch.ones(1).sum().item()
    report.on_train_batch_start(trainer, None, None, 0)  # the audit stops here and reports
    assert report.per_step() == [2, 1]
    assert "reads per step: 1 on 1 step(s), 2 on 1 step(s)" in capsys.readouterr().out
    torch.ones(1).sum().item()
    assert report.per_step() == [2, 1]  # off now


def test_the_report_pauses_for_validation_and_goes_on_after_it(capsys):
    from types import SimpleNamespace

    trainer = SimpleNamespace(is_global_zero=True, log_every_n_steps=5, training=True)
    report = HostSyncReport(steps=3)
    report.on_train_start(trainer, None)
    report.on_train_batch_start(trainer, None, None, 0)
    torch.ones(1).sum().item()
    trainer.training = False  # as inside the validation loop of a fit
    report.on_validation_start(trainer, None)
    torch.ones(1).sum().item()  # validation: not audited
    report.on_validation_end(trainer, None)
    trainer.training = True
    for _ in range(2):
        report.on_train_batch_start(trainer, None, None, 0)
        torch.ones(1).sum().item()
    report.on_train_end(trainer, None)
    assert report.per_step() == [1, 1, 1]
    assert "host round trips in 3 training steps" in capsys.readouterr().out


def _cuda_says_sync() -> None:
    """What torch.cuda.set_sync_debug_mode("warn") raises at a synchronising call."""
    import warnings

    warnings.warn("called a synchronizing CUDA operation", UserWarning)


def test_the_cuda_watch_records_each_synchronising_call_where_it_was_made(monkeypatch):
    """CudaSyncWatch turns PyTorch's warnings into events that name the caller, every time
    (not once per place, as Python's default filter would), lets other warnings through, and
    puts the warning filters back on exit. Fed warnings by hand: no CUDA here."""
    import warnings

    from magnifier.syncs import CudaSyncWatch, summarize

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no set_sync_debug_mode call
    filters = list(warnings.filters)
    watch = CudaSyncWatch(enabled=True)
    with pytest.warns(UserWarning, match="something else"):
        with watch:
            watch.step = 4
            for _ in range(3):
                _cuda_says_sync()
            warnings.warn("something else", UserWarning)
    assert [e.op for e in watch.events] == ["cuda_sync"] * 3
    assert {e.step for e in watch.events} == {4}
    assert "test_syncs.py:" in watch.events[0].where and watch.events[0].where.endswith(
        str(_cuda_says_sync.__code__.co_firstlineno + 4))
    assert summarize(watch.events).startswith("3 x cuda_sync at ") and "test_syncs.py:" in summarize(watch.events)
    assert warnings.filters == filters
    with warnings.catch_warnings(record=True) as caught:  # off now: the warning is a warning again
        warnings.simplefilter("always")
        _cuda_says_sync()
    assert len(caught) == 1 and len(watch.events) == 3


def test_the_cuda_watch_is_off_without_cuda():
    from magnifier.syncs import CudaSyncWatch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    import warnings

    with CudaSyncWatch() as watch, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        _cuda_says_sync()
    assert not watch.enabled and watch.events == []


def test_the_report_counts_cuda_syncs_per_step(capsys, monkeypatch):
    """On a GPU, debug=syncs also lists the calls set_sync_debug_mode flags, per step."""
    from types import SimpleNamespace

    from magnifier.syncs import CudaSyncWatch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = SimpleNamespace(is_global_zero=True, log_every_n_steps=5, training=True)
    report = HostSyncReport(steps=3)
    report.watch = CudaSyncWatch(enabled=True)
    report.on_train_start(trainer, None)
    for i in range(3):
        report.on_train_batch_start(trainer, None, None, i)
        for _ in range(i):
            _cuda_says_sync()
    report.on_train_end(trainer, None)
    assert report.per_step(report.watch.events) == [0, 1, 2]
    out = capsys.readouterr().out
    assert "CUDA synchronising calls (set_sync_debug_mode, copies included), per step: 0 on 1 step(s), 1 on 1 step(s), 2 on 1 step(s)" in out
    assert "3 x cuda_sync at" in out


def test_places_are_named_below_site_packages():
    """On the H200 machine the packages live under /opt/torch/.venv: a path test for "/torch/"
    took every installed package (Lightning's loops included) for PyTorch and named the user's
    train.py line for Lightning's reads."""
    from magnifier.syncs import _internal

    venv = "/opt/torch/.venv/lib/python3.12/site-packages/"
    assert not _internal(venv + "pytorch_lightning/loops/training_epoch_loop.py")
    assert not _internal("/opt/torch/work/src/magnifier/module.py")
    assert _internal(venv + "torch/nn/modules/module.py")
    assert _internal(venv + "lightning_fabric/utilities/apply_func.py")
    assert _internal("/work/main/src/magnifier/syncs.py")
    assert _internal("/usr/lib/python3.12/warnings.py")
    assert _internal("/home/me/pytorch/torch/optim/adam.py")  # a source checkout, no site-packages
