"""Semantic Diversity Loss: pushes the SFB's region vectors apart so each holds its own detail."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .precision import float32_loss


def _semantic_diversity_loss(region_feats: torch.Tensor | Sequence[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Mean over region pairs i < j of the batch-mean cosine similarity cos(f_i, f_j), clamped at 0.

    region_feats: (R, N, C) or a list of R tensors (N, C) -> scalar. Orthogonal regions give 0,
    identical ones 1; a negative mean similarity is clamped to 0 (the loss never rewards
    anti-correlation). Computed in float32 so mixed precision cannot overflow the norms.
    """
    feats = region_feats if isinstance(region_feats, torch.Tensor) else torch.stack(list(region_feats))
    if feats.dim() != 3 or feats.shape[0] < 2:
        raise ValueError(f"expected (R >= 2, N, C) region vectors, got shape {tuple(feats.shape)}")
    unit = F.normalize(feats.float(), dim=-1, eps=eps)  # (R, N, C)
    r = unit.shape[0]
    # cos[i, j] = batch mean of <f_i, f_j> over images, for all region pairs at once.
    cos = torch.einsum("inc,jnc->ij", unit, unit) / unit.shape[1]
    i, j = torch.triu_indices(r, r, offset=1, device=cos.device)
    return cos[i, j].mean().clamp_min(0.0)


# Wrapped by assignment rather than as a decorator so that `make mutation` (mutmut, which skips
# decorated functions) can reach the body.
semantic_diversity_loss = float32_loss(_semantic_diversity_loss)
