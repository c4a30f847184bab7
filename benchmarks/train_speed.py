"""Training speed on whatever device is present: the bare loop, and where the time goes.

(a) A bare loop of forward, loss, backward and Adam step for the baseline and MagnifierNet, the
    two models alternating step by step so that drift hits both alike, median of ``--steps``
    steps after ``--warmup``. One row per setting: input size, precision (fp32 with TF32 on a
    GPU, or bf16-mixed with channels_last), eager or ``torch.compile``, and the Adam
    implementation (``foreach`` or ``fused``). The figure that matters is the MagnifierNet /
    baseline ratio, measured in the same run.
(c) The profiler on one setting (``--profile``, default the last row): GPU-busy time (the sum of
    the device kernels' durations) over wall time per step, and kernel launches per step.

Prints one table and writes JSON (``--json``) with the device named. The Lightning loop
(``python -m magnifier.train``) is measured from its logged ``train/images_per_s``.

Usage: python benchmarks/train_speed.py [--batch 64] [--steps 15] [--warmup 5]
       [--rows 384x192:fp32:eager:foreach 256x128:bf16:eager:fused ...] [--backbone resnet50]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from magnifier.losses import ReIDLoss
from magnifier.models import Baseline, MagnifierNet

PAPER_LOSS = dict(parsing_weight=2.0, srb_weight=1.0, region_weight=0.0125, sfb_weight=1.0,
                  sfb_triplet_weight=1.0, diversity_weight=0.01)
DEFAULT_ROWS = ["384x192:fp32:eager:foreach", "384x192:bf16:eager:foreach", "256x128:bf16:eager:foreach",
                "256x128:bf16:eager:fused", "256x128:bf16:compile:fused"]


@dataclass(frozen=True)
class Setting:
    height: int
    width: int
    precision: str  # fp32 | bf16 (bf16 runs channels_last)
    mode: str  # eager | compile
    adam: str  # foreach | fused

    @classmethod
    def parse(cls, text: str) -> "Setting":
        size, precision, mode, adam = text.split(":")
        h, w = (int(v) for v in size.split("x"))
        assert precision in ("fp32", "bf16") and mode in ("eager", "compile") and adam in ("foreach", "fused"), text
        return cls(h, w, precision, mode, adam)

    def __str__(self) -> str:
        return f"{self.height}x{self.width}:{self.precision}:{self.mode}:{self.adam}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model, its loss and its optimiser on ``device`` in one setting; ``step()`` trains once."""

    def __init__(self, name: str, setting: Setting, device: torch.device, backbone: str, batch: int):
        torch.manual_seed(0)
        cls = Baseline if name == "baseline" else MagnifierNet
        self.model = cls(751, backbone=backbone).to(device)
        self.channels_last = setting.precision == "bf16"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = ReIDLoss(**PAPER_LOSS)
        kwargs = {"fused": True} if setting.adam == "fused" else {"foreach": True}
        if device.type != "cuda" and setting.adam == "fused":
            kwargs = {"fused": True}  # CPU fused Adam exists in recent PyTorch
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3.5e-4, weight_decay=5e-4, **kwargs)
        self.forward = torch.compile(self.model) if setting.mode == "compile" else self.model
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, setting.height, setting.width, generator=g)
        self.images = images.to(device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.masks = torch.randint(0, 8, (batch, setting.height, setting.width), generator=g).to(device)
        self.pids = torch.arange(batch // 4).repeat_interleave(4).to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.precision == "bf16")

    def step(self) -> None:
        self.model.train()
        with self.autocast:
            loss = self.criterion(self.forward(self.images, self.masks), self.pids)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def time_setting(setting: Setting, device: torch.device, backbone: str, batch: int, steps: int, warmup: int) -> dict:
    runners = {name: Runner(name, setting, device, backbone, batch) for name in ("baseline", "magnifier")}
    times: dict[str, list[float]] = {name: [] for name in runners}
    t_compile = time.perf_counter()
    for _ in range(warmup):  # allocation, cudnn autotuning, compilation
        for runner in runners.values():
            runner.step()
    _sync(device)
    warm_s = time.perf_counter() - t_compile
    for _ in range(steps):
        for name, runner in runners.items():
            _sync(device)
            t0 = time.perf_counter()
            runner.step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    base, mag = statistics.median(times["baseline"]), statistics.median(times["magnifier"])
    row = {"setting": str(setting), "baseline_ms": 1e3 * base, "magnifier_ms": 1e3 * mag, "ratio": mag / base,
           "baseline_images_s": batch / base, "magnifier_images_s": batch / mag, "warmup_s": warm_s}
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    del runners
    return row


def profile_setting(setting: Setting, device: torch.device, backbone: str, batch: int, steps: int) -> dict:
    """GPU-busy fraction and kernel launches per step, for each model in ``setting``."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name in ("baseline", "magnifier"):
        runner = Runner(name, setting, device, backbone, batch)
        for _ in range(3):
            runner.step()
        _sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                runner.step()
            _sync(device)
            wall = (time.perf_counter() - t0) / steps
        if device.type == "cuda":
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                       for e in kernels) / 1e6 / steps
            out[name] = {"wall_ms": 1e3 * wall, "gpu_busy_ms": 1e3 * busy, "gpu_busy_fraction": busy / wall,
                         "kernels_per_step": len(kernels) / steps}
        else:
            ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
            out[name] = {"wall_ms": 1e3 * wall, "ops_per_step": len(ops) / steps}
        del runner
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help="HxW:fp32|bf16:eager|compile:foreach|fused")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", default=None, help="the setting to profile (default: the last row); 'none' skips")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" on a GPU means TF32 tensor cores, as Lightning's default
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    settings = [Setting.parse(r) for r in args.rows]
    result = {"device": device_name(device), "date": time.strftime("%Y-%m-%d"), "backbone": args.backbone,
              "batch": args.batch, "steps": args.steps, "rows": []}
    print(f"{result['device']}; {args.backbone}, batch {args.batch}, median of {args.steps} steps")
    print(f"{'setting':<30} {'baseline':>10} {'magnifier':>10} {'ratio':>6} {'mag img/s':>10} {'warm-up':>8}")
    for setting in settings:
        row = time_setting(setting, device, args.backbone, args.batch, args.steps, args.warmup)
        result["rows"].append(row)
        print(f"{row['setting']:<30} {row['baseline_ms']:8.1f}ms {row['magnifier_ms']:8.1f}ms {row['ratio']:5.2f}x "
              f"{row['magnifier_images_s']:10.0f} {row['warmup_s']:7.1f}s", flush=True)
    target = args.profile or str(settings[-1])
    if target != "none":
        prof = profile_setting(Setting.parse(target), device, args.backbone, args.batch, args.profile_steps)
        result["profile"] = {"setting": target, **prof}
        for name, stats in prof.items():
            print(f"profile {target} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
