"""Training-step cost of MagnifierNet against the baseline, and inference throughput.

Both models share the backbone, batch and input size and are timed in the same run,
alternating one step of each so that machine noise hits both alike; the figure that matters
is the ratio. Inference: images/s of the L2-normalised embedding (4096-d for ResNet-50).

Usage: python benchmarks/model_speed.py [--backbone resnet50] [--batch-size 16]
       [--height 256 --width 128] [--steps 6] [--precision 32|bf16] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from magnifier.losses import ReIDLoss
from magnifier.models import Baseline, MagnifierNet

PAPER_LOSS = dict(parsing_weight=2.0, srb_weight=1.0, region_weight=0.0125, sfb_weight=1.0,
                  sfb_triplet_weight=1.0, diversity_weight=0.01)


def make_batch(n: int, h: int, w: int, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=g)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, 8, (n, h, w), generator=g)
    pids = torch.arange(n // 4).repeat_interleave(4)
    return images, masks, pids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--inference-batch", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {
        "baseline": Baseline(751, backbone=args.backbone).to(memory_format=fmt),
        "magnifier": MagnifierNet(751, backbone=args.backbone).to(memory_format=fmt),
    }
    criterion = ReIDLoss(**PAPER_LOSS)
    images, masks, pids = make_batch(args.batch_size, args.height, args.width, args.channels_last)
    opts = {k: torch.optim.Adam(m.parameters(), lr=3.5e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    for step in range(args.steps + 1):
        for name, model in models.items():  # alternate, so drift hits both models alike
            model.train()
            t0 = time.perf_counter()
            with autocast:
                loss = criterion(model(images, masks), pids)["loss"]
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if step > 0:  # the first step allocates and picks kernels
                times[name].append(time.perf_counter() - t0)
    base, mag = statistics.median(times["baseline"]), statistics.median(times["magnifier"])
    print(f"{args.backbone}, batch {args.batch_size}, {args.height}x{args.width}, precision {args.precision}, "
          f"channels_last {args.channels_last}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"  training step  baseline {base:.3f} s   magnifier {mag:.3f} s   ratio {mag / base:.2f}x")
    x = torch.randn(args.inference_batch, 3, args.height, args.width).contiguous(memory_format=fmt)
    for name, model in models.items():
        model.eval()
        with torch.inference_mode(), autocast:
            model(x)
            t0 = time.perf_counter()
            reps = 3
            for _ in range(reps):
                emb = model(x)
        rate = reps * args.inference_batch / (time.perf_counter() - t0)
        print(f"  inference      {name:<10} {rate:7.1f} images/s   embedding {emb.shape[1]}-d")


if __name__ == "__main__":
    main()
