"""The weighted sum of ReID losses, each term reported by name."""

from __future__ import annotations

import torch
from torch import nn

from .identity import cross_entropy_label_smooth
from .triplet import batch_hard_triplet_loss


class ReIDLoss(nn.Module):
    """Global ID (label-smoothed) + batch-hard triplet, weighted.

    ``forward(outputs, pids)`` takes the model's training dict (``global_logits`` (N, C),
    ``global_feat`` (N, D)) and pids (N,), and returns a dict of scalars: ``loss`` (the weighted
    total that is back-propagated), one entry per term (unweighted) and ``triplet_acc``.
    """

    def __init__(
        self,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.1,
        margin: float | None = 0.3,
    ):
        super().__init__()
        self.id_weight, self.triplet_weight = id_weight, triplet_weight
        self.label_smoothing, self.margin = label_smoothing, margin

    def forward(self, outputs: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        total = outputs["global_logits"].new_zeros((), dtype=torch.float32)
        if self.id_weight:
            terms["id"] = cross_entropy_label_smooth(outputs["global_logits"], pids, self.label_smoothing)
            total = total + self.id_weight * terms["id"]
        if self.triplet_weight:
            terms["triplet"], terms["triplet_acc"] = batch_hard_triplet_loss(outputs["global_feat"], pids, self.margin)
            total = total + self.triplet_weight * terms["triplet"]
        terms["loss"] = total
        return terms
