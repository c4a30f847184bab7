"""``compile=...``: torch.compile of the network and the loss trains as eager does, with no
graph break in MagnifierNet's step."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from magnifier.compilation import RecompileWatch, compile_options, describe_graph_breaks
from magnifier.errors import UserError

from .conftest import fit_tiny_steps


def test_compile_options():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {} and compile_options("default") == {}
    assert compile_options("reduce-overhead") == {"mode": "reduce-overhead"}
    cfg = OmegaConf.create({"backend": "aot_eager", "fullgraph": True, "options": {"a": 1}})
    assert compile_options(cfg) == {"backend": "aot_eager", "fullgraph": True, "options": {"a": 1}}
    with pytest.raises(UserError, match="compile=fast: not a torch.compile mode"):
        compile_options("fast")
    with pytest.raises(UserError, match="unknown key.*backnd"):
        compile_options({"backnd": "eager"})
    with pytest.raises(UserError, match="compile.mode=fast"):
        compile_options({"mode": "fast"})
    with pytest.raises(UserError, match="compile=3"):
        compile_options(3)


def test_describe_graph_breaks():
    from collections import Counter

    assert describe_graph_breaks(Counter()) == "torch.compile: 0 graph breaks"
    line = describe_graph_breaks(Counter({"Attempted to wrap RNN\nmore": 3, "print": 1}))
    assert line.startswith("torch.compile: 4 graph break(s): 3 x Attempted to wrap RNN; 1 x print")


def test_recompile_watch_counts_the_compilations_of_a_changed_guard():
    """The control for the no-recompile check below: a new input shape compiles again."""
    import torch

    layer = torch.nn.Linear(4, 2)
    layer.compile(backend="eager")
    watch = RecompileWatch()
    assert watch.stop() == 0  # not started
    layer(torch.randn(2, 4))  # the first compilation, not watched
    for rows, compiled in ((2, 0), (3, 1), (3, 0)):
        watch.start()
        layer(torch.randn(rows, 4))
        assert watch.stop() == compiled
    assert watch.total == 1


def _fit(data_dir, tmp_path, compile) -> tuple[list[float], dict]:
    from magnifier import tensors

    tensors._CONSTANTS.clear()  # as in a fresh process: a cache Dynamo guards on recompiled step 2
    losses, _, module, _ = fit_tiny_steps(data_dir, tmp_path, compile=compile)
    if compile:
        # Every step erases other SRB regions and samples other identities: none may recompile.
        assert module.recompiles.total == 0
    return losses, {k: v.detach().clone() for k, v in module.net.state_dict().items()}


def _compare(eager, compiled, rtol: float) -> None:
    """The first step's loss to rounding (same weights, same random regions); the second within
    ``rtol`` (one Adam update apart); the third within 1e-3. Weights are not compared
    element-wise: Adam's first updates are about lr * sign(gradient), so a rounding-sized change
    of a near-zero gradient moves a weight by a whole step, and by the third step such moves add
    up (aot_eager against eager on one CPU: 3e-7 relative at the second step, 2.5e-5 at the
    third)."""
    (loss_e, state_e), (loss_c, state_c) = eager, compiled
    assert len(loss_e) == len(loss_c) == 3
    assert loss_c[0] == pytest.approx(loss_e[0], rel=1e-5)
    assert loss_c[1] == pytest.approx(loss_e[1], rel=rtol)
    assert loss_c[2] == pytest.approx(loss_e[2], rel=max(rtol, 1e-3))
    assert state_c.keys() == state_e.keys()  # compiled in place: checkpoints keep their keys


def test_compiled_step_traces_without_graph_breaks_and_trains_as_eager(tiny_data_dir, tmp_path, capsys):
    """AOTAutograd's graphs run eagerly (``backend=aot_eager``): Dynamo traces the whole step of
    MagnifierNet (the SFB's LSTM included) and its backward, and three Adam steps follow eager's."""
    eager = _fit(tiny_data_dir, tmp_path / "eager", False)
    compiled = _fit(tiny_data_dir, tmp_path / "compiled", {"backend": "aot_eager"})
    out = capsys.readouterr().out
    assert "torch.compile: 0 graph breaks" in out and "recompiled" not in out
    _compare(eager, compiled, rtol=1e-5)


@pytest.mark.slow
def test_inductor_compiled_training_follows_eager(tiny_data_dir, tmp_path, capsys):
    """The default backend (inductor, C++ code generated for the CPU): about a minute to compile.
    ``fallback_random`` makes inductor draw the SRB's erased regions from PyTorch's generator as
    eager does (by default it has its own), so that the runs are comparable; fused kernels round
    differently, hence the looser tolerance after the first step."""
    eager = _fit(tiny_data_dir, tmp_path / "eager", False)
    compiled = _fit(tiny_data_dir, tmp_path / "compiled", {"options": {"fallback_random": True}})
    assert "torch.compile: 0 graph breaks" in capsys.readouterr().out
    _compare(eager, compiled, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_compiled_training_under_two_process_ddp(tiny_data_dir, tmp_path):
    """compile= with DDP (two gloo processes): the compiled network sits inside Lightning's DDP
    wrapper, trains, validates and tests; no graph break, and no training step compiles again."""
    from .conftest import tiny_overrides
    from .test_train import _train

    run = _train(tiny_overrides(tiny_data_dir) + [
        f"paths.log_dir={tmp_path}/logs", "trainer=ddp_sim", "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
        "trainer.check_val_every_n_epoch=1", "logger=csv", "dataset.batch_size=8", "~callbacks.progress_bar",
        "model/backbone=resnet18", "compile={backend: aot_eager}"], cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch.compile: 0 graph breaks" in run.stdout and "recompiled" not in run.stdout, run.stdout[-3000:]
    assert "rank1" in run.stdout  # the test table


def test_compiled_eval_step_keeps_its_own_copy_of_the_features():
    """Under CUDA graphs the network's output lives in the graph's memory pool and the next
    batch's replay overwrites it, while the metric keeps every batch's features until the epoch
    ends: a compiled module hands the metric a copy (an eager one need not)."""
    from types import SimpleNamespace

    import torch

    from magnifier.evaluation import ReIDMetric
    from magnifier.module import ReIDModule

    out = torch.randn(4, 8)
    batch = {"image": torch.zeros(4, 3, 8, 4), "pid": torch.arange(4), "camid": torch.zeros(4, dtype=torch.long),
             "is_query": torch.tensor([True, False, False, False]), "index": torch.arange(4)}
    for compiled in (False, True):
        metric = ReIDMetric()
        module = SimpleNamespace(net=lambda images, masks: out, _images=lambda b: b["image"], _compiled=compiled)
        ReIDModule._eval_step(module, metric, batch)
        stored = metric.features[-1]
        assert torch.equal(stored, out)
        shares = stored.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        assert shares is not compiled  # eager stores the output itself; compiled, a copy
        out.add_(1)  # what a replay would do to the pool
        assert torch.equal(stored, out) is not compiled
