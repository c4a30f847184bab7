"""MagnifierNet (arXiv 2002.10979): global branch + parsing head + SRB + SFB on a ResNet,
with an optional attribute branch."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attributes import AttributeBranch, soft_region_masks
from .backbones import ResNetBackbone
from .branches import GRID_SAMPLING, GlobalBranch, ParsingHead, SemanticFusionBranch, SemanticRegularizationBranch, labels_to_grid

BRANCHES = ("global", "srb", "sfb")


class MagnifierNet(nn.Module):
    """The full model; every part can be switched off for the paper's ablation.

    Train mode: ``model(images, masks)`` with images (N, 3, H, W) and part labels masks
    (N, H', W') long returns a dict of named outputs for :class:`magnifier.losses.ReIDLoss`:
    ``global_feat`` (N, C4) / ``global_logits`` (N, K); with the parsing head
    ``parsing_logits`` (N, 8, 2h, 2w); with the SRB ``srb_feat``, ``srb_logits``, ``srb_beta``,
    ``srb_keep``; with the SFB ``sfb_region_feats`` (8, N, C3), ``sfb_region_logits``
    (8, N, K), ``sfb_region_betas`` (8,), ``sfb_feat`` (N, C3), ``sfb_logits`` (N, K); with the
    attribute branch ``attr_logits`` (N, A) and ``attr_maps`` (N, 4, h, w).

    Eval mode: ``model(images)`` returns the L2-normalised embedding (N, D): the BN features
    of the branches in ``embedding`` concatenated (D = 2048 + 1024 + 1024 = 4096 for ResNet-50
    with all branches). The SFB's regions come from the parsing head's prediction, so images
    alone suffice; ``gt_masks_at_test=True`` uses the given masks instead (analysis only).

    Args:
        num_classes: training identities (K).
        backbone: resnet18/34/50/101 or a built :class:`ResNetBackbone`.
        pretrained, weights, last_stride: passed to the backbone when it is built here.
        parsing: the parsing head (trained with the label maps; needed by the SFB at test time).
        srb: the semantic regularization branch; ``erase_upper``/``erase_lower`` regions erased,
            ``erase_per_sample`` for one choice per image instead of per batch.
        sfb: the semantic fusion branch with ``fusion`` = lstm | concat | attention.
        srb_channels: the SRB's output width (default: layer3's width, 1024 for ResNet-50).
        embedding: which branches make the test embedding (default: every enabled one).
        gt_masks_at_test: in eval mode, use masks passed to forward for the SFB.
        attributes: A, the bits of the identity-attribute vector (30 for Market-1501, 23 for
            DukeMTMC-reID with :mod:`magnifier.data.attributes`); 0 (default) switches the
            attribute branch off. When on, :class:`AttributeBranch` predicts the attributes from
            layer4 through four attention maps (general, head, upper, lower), and the SFB's region
            masks are softened with the head/upper/lower maps (also at test time: the maps come
            from the image), see :func:`soft_region_masks`.
        attribute_mask_weight: the maps' weight in the SFB masks (0.2 on Market/Duke per the
            model notes; 0 keeps the hard masks).
        attribute_groups: sizes of the (general, head, upper, lower) attribute groups; None takes
            the Market/Duke layout from ``attributes``.
        classifier_bias: the ID classifiers (global, SRB, SFB regions and fused) have a bias, as
            in the authors' ``MT_Model.py``; False is the strong baseline's bias-free classifier.
        parsing_init: ``authors`` (N(0, 0.001) weights, zero bias) or ``pytorch`` (default init)
            for the parsing head, see :class:`ParsingHead`.
        attribute_head: ``authors`` (a bottleneck before the attention conv, plain average
            pooling) or ``ours`` (neither), see :class:`AttributeBranch`.
        grid_sampling: how the full-resolution label maps are brought to the feature grid and to
            the parsing head's output: ``centre`` (each cell's centre pixel) or ``corner`` (its
            top-left pixel), see :func:`labels_to_grid`.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | ResNetBackbone = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        last_stride: int = 1,
        parsing: bool = True,
        srb: bool = True,
        sfb: bool = True,
        fusion: str = "lstm",
        erase_upper: int = 2,
        erase_lower: int = 1,
        erase_per_sample: bool = False,
        srb_channels: int | None = None,
        parsing_channels: int = 256,
        embedding: Sequence[str] | None = None,
        gt_masks_at_test: bool = False,
        attributes: int = 0,
        attribute_mask_weight: float = 0.2,
        attribute_groups: Sequence[int] | None = None,
        classifier_bias: bool = True,
        parsing_init: str = "authors",
        attribute_head: str = "authors",
        grid_sampling: str = "centre",
    ):
        super().__init__()
        if isinstance(backbone, str):
            backbone = ResNetBackbone(backbone, pretrained=pretrained, weights=weights, last_stride=last_stride)
        if sfb and not parsing and not gt_masks_at_test:
            raise ValueError("the SFB needs part labels at test time: enable parsing or set gt_masks_at_test=True")
        self.backbone = backbone
        c3, c4 = backbone.layer3_channels, backbone.out_channels
        if grid_sampling not in GRID_SAMPLING:
            raise ValueError(f"grid_sampling must be one of {', '.join(GRID_SAMPLING)}, got {grid_sampling!r}")
        self.grid_sampling = grid_sampling
        self.global_branch = GlobalBranch(c4, num_classes, classifier_bias)
        self.parsing_head = ParsingHead(c4, parsing_channels, init=parsing_init) if parsing else None
        self.srb = (
            SemanticRegularizationBranch(
                c3, num_classes, srb_channels, erase_upper, erase_lower, erase_per_sample, classifier_bias
            )
            if srb
            else None
        )
        self.sfb = SemanticFusionBranch(c3, num_classes, fusion, classifier_bias=classifier_bias) if sfb else None
        if attributes < 0:
            raise ValueError(f"attributes must be >= 0 (0: no attribute branch), got {attributes}")
        self.attribute_branch = (
            AttributeBranch(c4, attributes, attribute_groups, attribute_head) if attributes else None
        )
        self.attribute_mask_weight = attribute_mask_weight
        enabled = [b for b, on in zip(BRANCHES, (True, srb, sfb)) if on]
        self.embedding = list(embedding) if embedding is not None else enabled
        unknown = [b for b in self.embedding if b not in enabled]
        if unknown or not self.embedding:
            raise ValueError(f"embedding {self.embedding} must be a non-empty subset of the enabled branches {enabled}")
        self.gt_masks_at_test = gt_masks_at_test
        dims = {"global": c4, "srb": self.srb.out_channels if self.srb else 0, "sfb": c3}
        self.embedding_dim = sum(dims[b] for b in self.embedding)

    @property
    def needs_masks(self) -> bool:
        """Whether training needs part label maps."""
        return any(m is not None for m in (self.parsing_head, self.srb, self.sfb))

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        f3, f4 = self.backbone(images)
        grid = tuple(f3.shape[-2:])
        if self.training:
            if masks is None and self.needs_masks:
                raise ValueError(
                    "MagnifierNet with the parsing head, SRB or SFB needs part label maps in training "
                    "(batch['mask'], shape (N, H, W)); use model=baseline to train without them"
                )
            return self._train_outputs(f3, f4, masks, grid)
        return self._embed(f3, f4, masks, grid)

    def _train_outputs(self, f3, f4, masks, grid) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        out["global_feat"], _, out["global_logits"] = self.global_branch(f4)
        labels = labels_to_grid(masks, grid, self.grid_sampling) if masks is not None else None
        maps = None
        if self.attribute_branch is not None:
            attr = self.attribute_branch(f4)
            out["attr_logits"], out["attr_maps"] = attr["logits"], attr["maps"]
            maps = attr["maps"]
        if self.parsing_head is not None:
            out["parsing_logits"] = logits = self.parsing_head(f4)
            out["parsing_target"] = labels_to_grid(masks, tuple(logits.shape[-2:]), self.grid_sampling)
        if self.srb is not None:
            srb = self.srb(f3, labels)
            out.update(srb_feat=srb["feat"], srb_logits=srb["logits"], srb_beta=srb["beta"], srb_keep=srb["keep"])
        if self.sfb is not None:
            sfb = self.sfb(f3, labels, self._region_masks(labels, maps))
            out.update(
                sfb_region_feats=sfb["region_feats"],
                sfb_region_logits=sfb["region_logits"],
                sfb_region_betas=sfb["region_betas"],
                sfb_feat=sfb["feat"],
                sfb_logits=sfb["logits"],
            )
        return out

    def _region_masks(self, labels: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor | None:
        """Soft SFB masks from the attribute maps, or None for the hard masks of the labels."""
        if maps is None or not self.attribute_mask_weight:
            return None
        return soft_region_masks(labels, maps, self.attribute_mask_weight)

    def predict_parts(self, f4: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The parsing head's part labels on a (h, w) grid: (N, h, w) long."""
        logits = self.parsing_head(f4)
        return labels_to_grid(logits.argmax(1), size, self.grid_sampling)

    def _embed(self, f3, f4, masks, grid) -> torch.Tensor:
        parts = []
        if "global" in self.embedding:
            parts.append(self.global_branch(f4)[1])
        if "srb" in self.embedding:
            parts.append(self.srb(f3)["bn_feat"])
        if "sfb" in self.embedding:
            if self.gt_masks_at_test and masks is not None:
                labels = labels_to_grid(masks, grid, self.grid_sampling)
            else:
                labels = self.predict_parts(f4, grid)
            soft = self.attribute_branch is not None and self.attribute_mask_weight
            maps = self.attribute_branch.maps(f4) if soft else None
            parts.append(self.sfb(f3, labels, self._region_masks(labels, maps))["bn_feat"])
        return F.normalize(torch.cat(parts, dim=1).float(), dim=1)

    @torch.no_grad()
    def parse(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted part labels at the parsing head's resolution: (N, 2h, 2w) long."""
        if self.parsing_head is None:
            raise ValueError("this model has no parsing head")
        _, f4 = self.backbone(images)
        return self.parsing_head(f4).argmax(1)

