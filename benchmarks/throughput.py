"""Throughput of the data pipeline and of a training step (``make bench``).

Reports, on this machine:
  * data pipeline: images/s of one worker (JPEG + PNG decode and joint albumentations
    augmentation, exactly what a DataLoader worker runs), for training samples (float32, and
    uint8 as ``dataset.normalize_on_device`` hands them to the GPU) and evaluation samples;
  * training loader: MB per batch handed to the device and images/s of a one-worker
    DataLoader, float32 and uint8 batches;
  * training step: images/s of forward + backward + Adam step of the baseline model for each
    backbone asked for, at the given batch and input size.

Figures are medians over repeated runs; the first steps are warm-up and not counted.
Usage: python benchmarks/throughput.py [--backbones resnet18 resnet50] [--batch-size 64]
       [--height 128 --width 64] [--steps 8] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from magnifier.data import synthetic  # noqa: E402
from magnifier.data.dataset import ReIDImageDataset  # noqa: E402
from magnifier.data.datasets import load_dataset  # noqa: E402
from magnifier.data.transforms import build_transforms  # noqa: E402
from magnifier.losses import ReIDLoss  # noqa: E402
from magnifier.models import Baseline  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def bench_data(root: Path, height: int, width: int, repeats: int = 3) -> dict[str, float]:
    data = load_dataset("synthetic", root)
    train = ReIDImageDataset(data.train[:400], build_transforms(height, width, train=True), with_masks=True)
    # dataset.normalize_on_device: uint8 out of the worker, normalised on the GPU after the copy.
    train_u8 = ReIDImageDataset(data.train[:400], build_transforms(height, width, train=True, on_device=True),
                                with_masks=True)
    test = ReIDImageDataset(data.gallery[:400], build_transforms(height, width, train=False))
    out = {}
    for name, ds in (("train (image + label map, augmented)", train), ("train, uint8 (normalize_on_device)", train_u8),
                     ("eval (image only)", test)):
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            rates.append(len(ds) / (time.perf_counter() - t0))
        out[name] = statistics.median(rates)
    return out


def bench_loader(root: Path, height: int, width: int, batch: int, batches: int = 6) -> dict[str, tuple[float, float]]:
    """A DataLoader with one worker, as training uses it: (MB per batch handed to the device,
    images/s after the first batch), for float32 training batches and for the uint8 ones of
    ``dataset.normalize_on_device`` (part labels as uint8 too since they are made long on the
    device). The bytes are what pinning and the host-to-device copy move each step."""
    from torch.utils.data import DataLoader

    data = load_dataset("synthetic", root)
    out = {}
    for name, on_device in (("float32 batches", False), ("uint8 batches (normalize_on_device)", True)):
        ds = ReIDImageDataset(data.train[: batch * (batches + 1)],
                              build_transforms(height, width, train=True, on_device=on_device), with_masks=True)
        loader = DataLoader(ds, batch_size=batch, num_workers=1, drop_last=True)
        it = iter(loader)
        first = next(it)  # worker start-up
        size = sum(v.numel() * v.element_size() for v in first.values() if torch.is_tensor(v)) / 2**20
        t0 = time.perf_counter()
        n = sum(len(b["pid"]) for b in it)
        out[name] = (size, n / (time.perf_counter() - t0))
    return out


def bench_step(backbone: str, batch: int, height: int, width: int, steps: int) -> float:
    torch.manual_seed(0)
    model = Baseline(num_classes=751, backbone=backbone).train()
    criterion = ReIDLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    x = torch.randn(batch, 3, height, width)
    pids = torch.arange(batch // 4).repeat_interleave(4)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = criterion(model(x), pids)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up steps allocate memory and pick kernels
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", nargs="*", default=["resnet18", "resnet50"], help="none: data pipeline only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--data-root", default=None, help="a synthetic dataset folder (built in a temp folder if omitted)")
    args = p.parse_args()

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_root) if args.data_root else Path(tmp) / "synthetic"
        if not synthetic.is_complete(root):
            t0 = time.perf_counter()
            synthetic.generate(root)
            print(f"synthetic dataset (200 ids, defaults) generated in {time.perf_counter() - t0:.1f} s")
        print(f"\ndata pipeline, one worker, {args.height}x{args.width}:")
        for name, rate in bench_data(root, args.height, args.width).items():
            print(f"  {name:<40} {rate:8.0f} images/s")
        print(f"\ntraining loader, one worker, batch {args.batch_size}, {args.height}x{args.width}:")
        for name, (size, rate) in bench_loader(root, args.height, args.width, args.batch_size).items():
            print(f"  {name:<40} {size:6.2f} MB per batch {rate:8.0f} images/s")
    if not args.backbones or args.backbones == ["none"]:
        return
    print(f"\ntraining step (baseline, batch {args.batch_size}, {args.height}x{args.width}, forward+backward+Adam):")
    for backbone in args.backbones:
        rate = bench_step(backbone, args.batch_size, args.height, args.width, args.steps)
        print(f"  {backbone:<12} {rate:8.1f} images/s   {args.batch_size / rate:6.2f} s/step")


if __name__ == "__main__":
    main()
