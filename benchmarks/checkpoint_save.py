"""How long a checkpoint save holds up training, written in the training loop or in the
background (``async_checkpoints``), on this machine.

1. The plugin alone: MagnifierNet (ResNet-50 by default, 751 identities) with Adam's state after
   one step, saved as Lightning lays a checkpoint out, by ``AtomicCheckpointIO`` in the
   foreground (the call lasts the whole write: serialise, fsync, rename) and in the background
   (the call lasts the host copy; the write's own time is timed to its end). Median of
   ``--repeats``. Then the step time of a small training loop in the main thread while a
   background write runs, against the same loop with no write (the writer thread shares the
   interpreter and the cores).
2. The real loop (``--train-epochs N``, 0 to skip): ``python -m magnifier.train`` for N short
   epochs each way; Lightning's simple profiler gives the mean time of the epoch-end
   ``last.ckpt`` callback (``ModelCheckpoint ... on_train_epoch_end``), the time the loop waited.

Usage: python benchmarks/checkpoint_save.py [--backbone resnet50] [--repeats 3] [--train-epochs 4]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from magnifier.losses import ReIDLoss  # noqa: E402
from magnifier.models import MagnifierNet  # noqa: E402
from magnifier.resilience import AtomicCheckpointIO  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from throughput import machine  # noqa: E402
from train_speed import profiler_actions  # noqa: E402


def trained_state(backbone: str, device: torch.device) -> dict:
    """A checkpoint laid out as Lightning's (state_dict, optimizer_states, loop counters) for
    MagnifierNet with Adam's moments after one step, its tensors on ``device``."""
    torch.manual_seed(0)
    net = MagnifierNet(751, backbone=backbone).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3.5e-4, weight_decay=5e-4)
    images, masks = torch.randn(8, 3, 64, 32, device=device), torch.randint(0, 8, (8, 64, 32), device=device)
    pids = torch.arange(2, device=device).repeat_interleave(4)
    loss = ReIDLoss()(net(images, masks), pids)["loss"]
    loss.backward()
    opt.step()
    return {"epoch": 0, "global_step": 1, "state_dict": net.state_dict(), "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [], "callbacks": {}}


def bytes_of(checkpoint: dict) -> int:
    from lightning_utilities.core.apply_func import apply_to_collection

    sizes = []
    apply_to_collection(checkpoint, torch.Tensor, lambda t: sizes.append(t.numel() * t.element_size()))
    return sum(sizes)


def time_plugin(checkpoint: dict, folder: Path, repeats: int) -> dict:
    fore, back_call, back_write = [], [], []
    for i in range(repeats):
        io = AtomicCheckpointIO()
        t0 = time.perf_counter()
        io.save_checkpoint(checkpoint, folder / "last.ckpt")
        fore.append(time.perf_counter() - t0)
        io = AtomicCheckpointIO(background=True)
        t0 = time.perf_counter()
        io.save_checkpoint(checkpoint, folder / "last.ckpt")
        back_call.append(time.perf_counter() - t0)
        io.wait()
        back_write.append(time.perf_counter() - t0)
        io.teardown()
    return {"foreground_s": statistics.median(fore), "background_call_s": statistics.median(back_call),
            "background_until_written_s": statistics.median(back_write),
            "file_mb": (folder / "last.ckpt").stat().st_size / 2**20}


def steps_during_write(checkpoint: dict, folder: Path, steps: int, device: torch.device) -> dict:
    """Median step of a training loop with no write, and while background writes of
    ``checkpoint`` run one after another. On the CPU a small loop (ResNet-18 baseline, batch 16,
    128x64); on a GPU the issue's step (ResNet-50 baseline, batch 64, 256x128, bf16 autocast,
    channels_last, fused Adam), synchronised at the end of each step."""
    from magnifier.models import Baseline

    torch.manual_seed(0)
    cuda = device.type == "cuda"
    net = Baseline(751 if cuda else 100, backbone="resnet50" if cuda else "resnet18").to(device)
    opt = torch.optim.Adam(net.parameters(), **({"fused": True} if cuda else {}))
    batch, size = (64, (256, 128)) if cuda else (16, (128, 64))
    images = torch.randn(batch, 3, *size, device=device)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    pids = torch.arange(batch // 4, device=device).repeat_interleave(4)
    criterion = ReIDLoss()

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = criterion(net(images), pids)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(5 if cuda else 3):  # cudnn's autotuning, allocations
        step()
    quiet = [step() for _ in range(steps)]
    io = AtomicCheckpointIO(background=True, max_pending=1)
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            io.save_checkpoint(checkpoint, folder / "busy.ckpt")
            io.wait()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    busy = [step() for _ in range(steps)]
    stop.set()
    writer.join()
    io.teardown()
    q, b = statistics.median(quiet), statistics.median(busy)
    return {"step_s_no_write": q, "step_s_during_writes": b, "slowdown": b / q}


def train_run(async_on: bool, epochs: int, backbone: str, root: Path) -> dict:
    """``python -m magnifier.train`` for ``epochs`` epochs of 4 steps; the profiler's mean time of
    the epoch-end last.ckpt callback and of a training step."""
    out = root / ("async" if async_on else "sync")
    args = [f"paths.data_dir={root / 'data'}", f"paths.log_dir={out}", f"model/backbone={backbone}",
            "model.backbone.pretrained=false", "dataset.height=64", "dataset.width=32", "dataset.batch_size=16",
            "dataset.num_workers=0", f"trainer.max_epochs={epochs}", "+trainer.limit_train_batches=4",
            "trainer.check_val_every_n_epoch=1000", "test=false", "logger=csv", "+trainer.profiler=simple",
            f"async_checkpoints={str(async_on).lower()}"]
    run = subprocess.run([sys.executable, "-m", "magnifier.train", *args], capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout)[-1500:]}
    actions = profiler_actions(run.stdout)
    # callbacks.last_checkpoint: the ModelCheckpoint without a metric, saving every epoch
    save = [a for a in actions if a["action"].startswith("[Callback]ModelCheckpoint{'monitor': None")
            and a["action"].endswith("on_train_epoch_end")]
    every = [a for a in actions if a["action"] == "save_checkpoint"]  # every save, the best's too
    batch = [a for a in actions if a["action"] == "run_training_batch"]
    return {"last_ckpt_epoch_end_ms": save[0]["mean_ms"] if save else None, "calls": save[0]["calls"] if save else 0,
            "save_checkpoint_ms": every[0]["mean_ms"] if every else None,
            "save_checkpoint_calls": every[0]["calls"] if every else 0,
            "training_batch_ms": batch[0]["mean_ms"] if batch else None,
            "checkpoint_mb": (next(out.glob("train/runs/*/checkpoints/last.ckpt")).stat().st_size / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=15, help="steps of the small loop, with and without writes")
    p.add_argument("--train-epochs", type=int, default=4, help="epochs of each real run (0: skip)")
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"machine": machine(), "backbone": args.backbone, "device": str(device)}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = trained_state(args.backbone, device)
        result["tensor_mb"] = bytes_of(checkpoint) / 2**20
        result["plugin"] = time_plugin(checkpoint, folder, args.repeats)
        gpu = f", {result['gpu']}" if "gpu" in result else ""
        print(f"{machine()}{gpu}\nMagnifierNet {args.backbone} + Adam: {result['plugin']['file_mb']:.0f} MB file")
        pl = result["plugin"]
        print(f"  save in the loop:         {pl['foreground_s'] * 1e3:8.0f} ms (median of {args.repeats})")
        print(f"  background, call returns: {pl['background_call_s'] * 1e3:8.0f} ms (host copy); "
              f"written after {pl['background_until_written_s'] * 1e3:.0f} ms")
        result["contention"] = c = steps_during_write(checkpoint, folder, args.steps, device)
        loop = "the GPU training" if device.type == "cuda" else "a small loop"
        print(f"  {loop}'s step: {c['step_s_no_write'] * 1e3:.0f} ms with no write, "
              f"{c['step_s_during_writes'] * 1e3:.0f} ms during background writes ({c['slowdown']:.2f}x)")
        if args.train_epochs:
            result["train"] = {}
            for on in (False, True):
                r = train_run(on, args.train_epochs, args.backbone, folder / "runs")
                result["train"]["async" if on else "sync"] = r
                if "error" in r:
                    print(f"  train async_checkpoints={on}: failed: {r['error'][-300:]}")
                    continue
                print(f"  python -m magnifier.train async_checkpoints={str(on).lower()}: epoch-end last.ckpt "
                      f"{r['last_ckpt_epoch_end_ms']:.0f} ms x {r['calls']}; every save (trainer.save_checkpoint) "
                      f"{r['save_checkpoint_ms']:.0f} ms x {r['save_checkpoint_calls']}; a training step "
                      f"{r['training_batch_ms']:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
