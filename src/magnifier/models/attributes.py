"""MagnifierNet's optional attribute branch and the soft SFB region masks built from it.

Shapes: N images, C4 channels of layer4, h x w the feature grid, A attribute bits, R = 8 part
labels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from magnifier.parts import ATTRIBUTE_GROUPS, NUM_PARTS, group_sizes_for
from magnifier.tensors import device_constant

from .branches import fresh_bottleneck

#: The attention map each part label's SFB mask is softened with (an index into
#: :data:`ATTRIBUTE_GROUPS`): head -> head map; torso and arms -> upper map; legs and foot ->
#: lower map. Background (None) keeps its hard mask.
REGION_MAP = (None, 1, 2, 2, 2, 3, 3, 3)


class AttributeBranch(nn.Module):
    """Four attention maps on layer4 and identity-attribute classifiers that read through them.

    * Attention: a 1x1 conv (C4 -> 4) + sigmoid gives the maps ``general``, ``head``, ``upper``
      and ``lower``: (N, 4, h, w) in (0, 1). With ``head="authors"`` (the authors'
      ``AttrAttnBlockFc`` with its default ``attr_bottleneck``) the conv reads a fresh ResNet
      bottleneck (C4 -> C4 / 4 -> C4) on layer4; with ``"ours"`` it reads layer4 itself.
    * Pooling: each map pools layer4 into one (N, C4) vector per map: ``authors``, the plain
      average of a_k * f4 over the grid (as their ``F.avg_pool2d``); ``ours``, the weighted
      mean sum(a_k * f4) / sum(a_k), which does not shrink with the map's area.
    * Classification: the attribute vector is split into four consecutive groups of sizes
      ``group_sizes`` = (general, head, upper, lower) (the order of
      :mod:`magnifier.data.attributes`: e.g. age and gender are general, hair and hat are head,
      sleeves, bags and upper colours are upper, lower clothing, handbag and lower colours are
      lower). Each group has its own linear classifier on its own map's pooled vector, so the
      head map learns from the head attributes only, and so on: that is what makes the maps
      "head", "upper" and "lower" (the SFB uses them as such). The group logits are
      concatenated in order: (N, A) logits for a binary cross-entropy.

    ``forward(f4)`` returns ``logits`` (N, A) and ``maps`` (N, 4, h, w).

    Args:
        in_channels: C4.
        num_attributes: A.
        group_sizes: four group sizes summing to A; None takes the Market-1501 (30 bits:
            5, 2, 11, 12) or DukeMTMC-reID (23 bits: 1, 1, 11, 10) layout from the count.
        head: ``authors`` (bottleneck before the attention conv, plain average pooling) or
            ``ours`` (no bottleneck, weighted-mean pooling).
    """

    HEADS = ("authors", "ours")

    def __init__(
        self, in_channels: int, num_attributes: int, group_sizes: Sequence[int] | None = None, head: str = "authors"
    ):
        super().__init__()
        if head not in self.HEADS:
            raise ValueError(f"attribute head must be one of {', '.join(self.HEADS)}, got {head!r}")
        self.head = head
        self.bottleneck = fresh_bottleneck(in_channels) if head == "authors" else None
        if num_attributes < 1:
            raise ValueError(f"the attribute branch needs num_attributes >= 1, got {num_attributes}")
        if group_sizes is None:
            group_sizes = group_sizes_for(num_attributes)
            if group_sizes is None:
                raise ValueError(
                    f"no known attribute layout has {num_attributes} bits (Market-1501: 30, DukeMTMC-reID: 23); "
                    "give attribute_groups: the sizes of the (general, head, upper, lower) groups"
                )
        group_sizes = [int(g) for g in group_sizes]
        if len(group_sizes) != len(ATTRIBUTE_GROUPS) or min(group_sizes) < 0 or sum(group_sizes) != num_attributes:
            raise ValueError(
                f"attribute_groups must be 4 sizes (general, head, upper, lower) summing to {num_attributes}, "
                f"got {group_sizes}"
            )
        self.num_attributes, self.group_sizes = num_attributes, tuple(group_sizes)
        self.attention = nn.Conv2d(in_channels, len(ATTRIBUTE_GROUPS), 1)
        self.classifiers = nn.ModuleList(nn.Linear(in_channels, n) if n else nn.Identity() for n in group_sizes)
        for fc in self.classifiers:
            if isinstance(fc, nn.Linear):
                nn.init.normal_(fc.weight, std=0.001)
                nn.init.zeros_(fc.bias)

    def maps(self, f4: torch.Tensor) -> torch.Tensor:
        """The attention maps (N, 4, h, w) in (0, 1): general, head, upper, lower."""
        x = self.bottleneck(f4) if self.bottleneck is not None else f4
        return torch.sigmoid(self.attention(x))

    def forward(self, f4: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.maps(f4)
        pooled = torch.einsum("nkhw,nchw->nkc", maps, f4)  # (N, 4, C): sum of a_k * f4 over the grid
        if self.head == "authors":
            pooled = pooled / (f4.shape[-2] * f4.shape[-1])  # the plain average
        else:
            pooled = pooled / maps.sum((2, 3))[..., None].clamp_min(1e-6)  # the weighted mean
        logits = [fc(pooled[:, k]) for k, (fc, n) in enumerate(zip(self.classifiers, self.group_sizes)) if n]
        return {"logits": torch.cat(logits, dim=1), "maps": maps}


def soft_region_masks(labels: torch.Tensor, maps: torch.Tensor, weight: float) -> torch.Tensor:
    """The SFB's region masks softened by the attribute maps: (N, R, h, w) float.

    Mask r is 1 on the positions labelled r and ``weight`` x its attention map (``REGION_MAP``:
    head map for the head, upper map for torso and arms, lower map for legs and foot)
    elsewhere; the background mask stays hard (1/0). The maps (N, 4, h', w') are detached (the
    SFB does not train the attribute branch) and resized bilinearly to the label grid (h, w)
    when they differ (last stride 2).
    """
    maps = maps.detach()
    if tuple(maps.shape[-2:]) != tuple(labels.shape[-2:]):
        maps = F.interpolate(maps, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    index = device_constant(tuple(0 if k is None else k for k in REGION_MAP), maps.device)
    hard_only = device_constant(tuple(r for r, k in enumerate(REGION_MAP) if k is None), maps.device)
    soft = weight * maps[:, index]  # (N, R, h, w)
    soft[:, hard_only] = 0
    hard = F.one_hot(labels, NUM_PARTS).permute(0, 3, 1, 2).bool()
    return torch.where(hard, torch.ones_like(soft), soft)
