"""The attribute branch's loss: binary cross-entropy over identity-attribute bits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss


def _attribute_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all N x A bits, in float32.

    ``logits`` (N, A) from the attribute branch, ``targets`` (N, A) in {0, 1} (each image's
    identity attributes, :mod:`magnifier.data.attributes`).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"attribute logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits, targets)


# Wrapped by assignment rather than as a decorator so that `make mutation` (mutmut, which skips
# decorated functions) can reach the body.
attribute_bce_loss = float32_loss(_attribute_bce_loss)
