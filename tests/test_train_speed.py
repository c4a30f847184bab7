"""benchmarks/train_speed.py's bookkeeping: the issue's three goals read from one run's
figures (hand-made here; the figures themselves need a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # its dataclass looks its module up while being made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["train_speed"]
    return module


def _row(setting: str, ratio: float, images_s: float) -> dict:
    return {"setting": setting, "ratio": ratio, "magnifier_images_s": images_s}


RESULT = {
    "rows": [_row("384x192:fp32:eager:foreach", 1.20, 985.0), _row("256x128:bf16:eager:foreach", 1.52, 1620.0),
             _row("256x128:bf16:eager:fused", 1.44, 1600.0), _row("256x128:bf16:compile:fused", 1.25, 2000.0)],
    "lightning": {"images_s": 1440.0},
    "profile": {"setting": "256x128:bf16:eager:fused", "magnifier": {"gpu_busy_fraction": 0.34}},
}


def test_goals_name_the_rows_they_come_from(train_speed):
    goals = train_speed.goals(RESULT, [])
    assert goals["lightning_over_bare"] == {"value": pytest.approx(0.9), "bare": "256x128:bf16:eager:fused"}
    # the best bf16 ratio; the fp32 row's 1.20 is not a bf16 figure
    assert goals["bf16_ratio"] == {"value": 1.25, "setting": "256x128:bf16:compile:fused"}
    assert goals["gpu_busy_fraction"] == {"value": 0.34, "setting": "256x128:bf16:eager:fused"}
    # a compiled Lightning run is compared with the compiled bare loop
    compiled = train_speed.goals(RESULT, ["compile=true"])["lightning_over_bare"]
    assert compiled == {"value": pytest.approx(0.72), "bare": "256x128:bf16:compile:fused"}
    assert train_speed.goals(RESULT, ["compile=false"])["lightning_over_bare"]["bare"] == "256x128:bf16:eager:fused"
    timed = {**RESULT, "profile": {"setting": "256x128:bf16:eager:fused",
                                   "magnifier": {"gpu_busy_fraction": 0.25, "gpu_busy_of_timed_step": 0.34}}}
    assert train_speed.goals(timed, [])["gpu_busy_fraction"]["value"] == 0.34  # over the unprofiled step


def test_goals_leave_out_what_the_run_did_not_measure(train_speed):
    assert train_speed.goals({"rows": []}, []) == {}
    only_fp32 = {"rows": [RESULT["rows"][0]], "lightning": {"images_s": 900.0}}
    assert train_speed.goals(only_fp32, []) == {}  # no bf16 row: neither goal 1's bare row nor goal 2


def test_settings_parse_and_print_back(train_speed):
    setting = train_speed.Setting.parse("384x192:bf16:compile:fused")
    assert (setting.height, setting.width, setting.precision, setting.mode, setting.adam) == (384, 192, "bf16", "compile",
                                                                                             "fused")
    assert str(setting) == "384x192:bf16:compile:fused"
    with pytest.raises(AssertionError):
        train_speed.Setting.parse("384x192:fp16:eager:fused")


def test_graphs_rows_and_a_reduce_overhead_lightning_run_pair_up(train_speed):
    assert train_speed.Setting.parse("256x128:bf16:graphs:fused").mode == "graphs"
    result = {"rows": [_row("256x128:bf16:compile:fused", 1.25, 2000.0), _row("256x128:bf16:graphs:fused", 1.10, 2400.0)],
              "lightning": {"images_s": 2160.0}}
    goals = train_speed.goals(result, ["compile=reduce-overhead"])
    assert goals["lightning_over_bare"] == {"value": pytest.approx(0.9), "bare": "256x128:bf16:graphs:fused"}
    assert train_speed.goals(result, ["compile=true"])["lightning_over_bare"]["bare"] == "256x128:bf16:compile:fused"


def test_the_simple_profiler_report_is_read_back(train_speed):
    """The rows of a real Lightning SimpleProfiler report, as the Lightning run prints it."""
    from pytorch_lightning.profilers import SimpleProfiler

    profiler = SimpleProfiler()
    for _ in range(3):
        with profiler.profile("[_TrainingEpochLoop].train_dataloader_next"):
            pass
        with profiler.profile("run_training_batch"):
            sum(range(20000))
    actions = train_speed.profiler_actions("some log line | with | bars\n" + profiler.summary())
    assert sorted(a["action"] for a in actions) == ["[_TrainingEpochLoop].train_dataloader_next", "run_training_batch"]
    batch = next(a for a in actions if a["action"] == "run_training_batch")
    assert batch["calls"] == 3 and batch["mean_ms"] > 0 and batch["total_s"] == pytest.approx(3 * batch["mean_ms"] / 1e3, rel=1e-3)


def test_a_small_run_on_the_cpu_writes_its_rows_profiles_and_reads(tmp_path):
    """The whole script on the CPU at a toy size: an eager row profiled with its own models, a
    setting profiled on its own, and the sync check, all in the JSON (the GPU run has one try)."""
    import json
    import os
    import subprocess

    out = tmp_path / "speed.json"
    row, other = "64x32:fp32:eager:foreach", "64x32:fp32:eager:fused"
    run = subprocess.run([sys.executable, str(SCRIPT), "--backbone", "resnet18", "--batch", "8", "--steps", "2",
                          "--warmup", "1", "--rows", row, "--profile", other, row, "--profile-steps", "1",
                          "--sync-check", "--json", str(out)],
                         capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["setting"] for r in result["rows"]] == [row]
    assert set(result["profiles"]) == {row, other}
    assert result["profile"]["setting"] == other  # the first listed feeds the goals
    assert set(result["profiles"][row]) == {"setting", "baseline", "magnifier"}
    assert result["profiles"][row]["magnifier"]["ops_per_step"] > result["profiles"][row]["baseline"]["ops_per_step"]
    assert result["sync_check"]["reads"] == 0 and "syncs" not in result["sync_check"]  # no CUDA here


def test_the_sync_report_is_read_back_without_the_lines_after_it(train_speed):
    """What --lightning-args debug=syncs keeps: HostSyncReport's own lines, not the log lines
    that follow them (the H200 run's JSON held Lightning's 'max_steps reached' and the bar)."""
    from types import SimpleNamespace

    import torch

    from magnifier.monitor import HostSyncReport

    trainer = SimpleNamespace(is_global_zero=True, log_every_n_steps=50, training=True)
    report = HostSyncReport(steps=2)
    report.on_train_start(trainer, None)
    for _ in range(2):
        report.on_train_batch_start(trainer, None, None, 0)
        torch.ones(1).sum().item()
    report._set(False)
    text = report.report(50)
    out = ("a start-up line\n" + text + "\n[2026-11-27 11:53:32][pytorch_lightning][INFO] - `Trainer.fit` stopped\n"
           "Epoch 0/999 60/61\n")
    lines = train_speed.sync_report_lines(out)
    assert lines == [line.strip() for line in text.splitlines()] and len(lines) >= 3
    assert lines[0].startswith("host round trips in 2 training steps")
    assert train_speed.sync_report_lines("no report here") == []


def test_goals_compare_the_lightning_run_with_the_fed_loop_of_its_mode(train_speed):
    fed = {"mode": "eager", "fed_images_s": 1600.0}
    assert train_speed.goals({**RESULT, "fed": fed}, [])["lightning_over_fed"]["value"] == pytest.approx(0.9)
    assert "lightning_over_fed" not in train_speed.goals({**RESULT, "fed": fed}, ["compile=true"])  # other mode


def test_the_fed_loop_runs_the_three_ways_on_the_real_loader(train_speed, tmp_path):
    """(d) on the CPU, tiny: a resident batch, a copied one and the training loader's batches."""
    small = dict(num_ids=8, num_cams=2, images_per_cam=2, height=64, width=32, seed=0)
    out = train_speed.fed_run(1, str(tmp_path), 0, 8, warmup=1, backbone="resnet18", synthetic=small, settle=1,
                              profile_steps=1)
    assert out["profile"]["wall_ms"] > 0 and out["profile"]["ops_per_step"] > 100  # the CPU's figures
    for way in ("resident", "copied", "fed"):
        assert out[f"{way}_ms"] > 0 and out[f"{way}_images_s"] == pytest.approx(8e3 / out[f"{way}_ms"])
    assert out["loader_ms"] == pytest.approx(out["fed_ms"] - out["copied_ms"])
    assert out["transfer_normalise_ms"] == pytest.approx(out["copied_ms"] - out["resident_ms"])


def test_the_sync_check_takes_a_compiled_setting(train_speed, monkeypatch):
    """``--sync-check SETTING`` with a compiled setting: the step is warmed up (compiled) and no
    dispatch-mode audit runs over compiled code (``reads`` None); on a GPU the CUDA calls would
    be listed. Dynamo's ``eager`` backend here, to keep the test fast; an eager setting still
    gets its reads counted."""
    import torch

    compiled = []
    monkeypatch.setattr(train_speed, "compile_in_place",
                        lambda module, options: compiled.append(options) or module.compile(backend="eager"))
    cpu = torch.device("cpu")
    out = train_speed.sync_check(train_speed.Setting.parse("64x32:fp32:compile:fused"), cpu, "resnet18", 8)
    assert out == {"setting": "64x32:fp32:compile:fused", "reads": None, "reads_where": []}
    assert compiled == [{}, {}]  # the network and the loss
    out = train_speed.sync_check(train_speed.Setting.parse("64x32:fp32:eager:fused"), cpu, "resnet18", 8)
    assert out["reads"] == 0 and out["setting"] == "64x32:fp32:eager:fused"


def test_the_lightning_run_reads_images_s_and_the_data_share_back(train_speed, tmp_path):
    """(b) on the CPU, tiny (the overrides after the script's own win): images/s and the time
    between steps from the logged windows, the loader's wait from the simple profiler."""
    small = dict(num_ids=16, num_cams=2, images_per_cam=4, height=64, width=32, seed=0)  # 8 steps an epoch
    extra = ["model/backbone=resnet18", "dataset.height=64", "dataset.width=32", "trainer.precision=32-true",
             "channels_last=false", "trainer.log_every_n_steps=2", "~callbacks.progress_bar",
             *[f"dataset.synthetic.{k}={v}" for k, v in small.items()]]
    out = train_speed.lightning_run(7, str(tmp_path / "data"), str(tmp_path / "logs"), 0, 8, extra)
    assert "error" not in out, out.get("error")
    assert out["windows"] >= 2 and out["images_s"] > 0
    assert out["data_ms"] > 0 and 0 < out["data_share"] < 1
    assert out["loader_wait_ms"] > 0 and out["training_batch_ms"] > 0
