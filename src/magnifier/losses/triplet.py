"""Batch-hard triplet loss (Hermans et al.) on P x K batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) Euclidean distances, clamped so the sqrt gradient stays finite."""
    sq = x.pow(2).sum(1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt()


def _batch_hard_triplet_loss(
    features: torch.Tensor, pids: torch.Tensor, margin: float | None = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each anchor: its farthest positive and its nearest negative in the batch.

    features (N, D), pids (N,) -> (loss scalar, fraction of triplets already satisfied).
    ``margin=None`` uses the soft margin log(1 + exp(d_ap - d_an)). Runs in float32 because
    squared distances overflow float16.
    """
    dist = pairwise_euclidean(features.float())
    same = pids.unsqueeze(0) == pids.unsqueeze(1)
    d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    d_an = dist.masked_fill(same, float("inf")).amin(1)
    if margin is None:
        loss = F.softplus(d_ap - d_an).mean()
    else:
        loss = F.relu(d_ap - d_an + margin).mean()
    return loss, (d_an > d_ap).float().mean()


# Wrapped by assignment rather than as a decorator so that `make mutation` (mutmut, which skips
# decorated functions) can reach the body.
batch_hard_triplet_loss = float32_loss(_batch_hard_triplet_loss)
