"""Class-balanced pixel cross-entropy for the parsing head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss


def _class_balanced_parsing_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the part classes present in the batch of each class's mean pixel cross-entropy.

    logits (N, R, h, w); labels (N, H, W) long, brought to (h, w) by nearest neighbour. Small
    parts (feet, lower arms) weigh as much as the background, as in EANet's part-segmentation
    loss that MagnifierNet's authors use. Computed in float32.
    """
    if tuple(labels.shape[-2:]) != tuple(logits.shape[-2:]):
        labels = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    pixel = F.cross_entropy(logits.float(), labels, reduction="none").flatten()  # (N*h*w,)
    flat = labels.flatten()
    num_classes = logits.shape[1]
    # Sums and counts by index_add (bincount and boolean indexing would each wait for the GPU).
    sums = torch.zeros(num_classes, device=pixel.device).index_add_(0, flat, pixel)
    counts = torch.zeros(num_classes, device=pixel.device).index_add_(0, flat, torch.ones_like(pixel))
    present = (counts > 0).float()
    return (sums / counts.clamp_min(1) * present).sum() / present.sum()


# Wrapped by assignment rather than as a decorator so that `make mutation` (mutmut, which skips
# decorated functions) can reach the body.
class_balanced_parsing_loss = float32_loss(_class_balanced_parsing_loss)
