"""PyTorch operators in one forward and backward of MagnifierNet's loss (the paper's weights):
both triplet terms mined in one pass (the default) against one pass each (what
``loss.triplet_gather=true`` does without a process group). On a GPU each operator is at least
one kernel launch, so fewer operators is less host time per step; the count is the same on any
device, so this runs on the CPU.

Usage: python benchmarks/loss_ops.py [--batch 16]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from magnifier.losses import ReIDLoss  # noqa: E402
from magnifier.models import MagnifierNet  # noqa: E402

PAPER_WEIGHTS = dict(parsing_weight=2.0, srb_weight=1.0, region_weight=0.0125, sfb_weight=1.0, sfb_triplet_weight=1.0,
                     diversity_weight=0.01)


class CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    model = MagnifierNet(num_classes=args.batch // 4, backbone="resnet18")
    outputs = model(torch.randn(args.batch, 3, 64, 32), torch.randint(0, 8, (args.batch, 64, 32)))
    pids = torch.arange(args.batch // 4).repeat_interleave(4)
    print(f"MagnifierNet loss (paper weights), batch {args.batch}: ATen operators in forward + backward")
    for name, criterion in (("one pass per triplet term", ReIDLoss(triplet_gather=True, **PAPER_WEIGHTS)),
                            ("both triplet terms in one pass", ReIDLoss(**PAPER_WEIGHTS))):
        leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in outputs.items()}
        with CountOps() as ops:
            terms = criterion(leaves, pids)
            terms["loss"].backward()
        print(f"  {name:<32} {ops.count:5d} operators   loss {terms['loss'].detach().item():.6f}")


if __name__ == "__main__":
    main()
