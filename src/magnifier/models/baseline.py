"""The strong-baseline global branch: ResNet, global average pooling, BNNeck."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNetBackbone


def init_bnneck(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    """BNNeck: BatchNorm1d whose bias is frozen at zero (Luo et al., the strong baseline)."""
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def init_classifier(fc: nn.Linear) -> nn.Linear:
    nn.init.normal_(fc.weight, std=0.001)
    return fc


class GlobalBranch(nn.Module):
    """GAP on layer4 -> feature (triplet) -> BNNeck -> bias-free classifier (ID loss).

    ``forward(f4)`` with f4 (N, C, h, w) returns ``(feat, bn_feat, logits)``: (N, C), (N, C),
    (N, num_classes).
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.bnneck = init_bnneck(nn.BatchNorm1d(in_channels))
        self.classifier = init_classifier(nn.Linear(in_channels, num_classes, bias=False))

    def forward(self, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = F.adaptive_avg_pool2d(f4, 1).flatten(1)
        bn_feat = self.bnneck(feat)
        return feat, bn_feat, self.classifier(bn_feat)


class Baseline(nn.Module):
    """The global-branch model (strong baseline) that MagnifierNet builds on.

    Train mode: ``model(images, masks=None)`` with images (N, 3, H, W) returns a dict with
    ``global_feat`` (N, C) (for the triplet loss) and ``global_logits`` (N, num_classes).
    Eval mode: ``model(images)`` returns the L2-normalised embedding (N, C) after BNNeck.

    Args:
        num_classes: training identities.
        backbone: resnet18/34/50/101, or a built :class:`ResNetBackbone` (what the configs pass).
        pretrained: ImageNet weights from torchvision; ``weights`` a local file instead.
        last_stride: 1 (default) doubles layer4's resolution.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | ResNetBackbone = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        last_stride: int = 1,
    ):
        super().__init__()
        if isinstance(backbone, str):
            backbone = ResNetBackbone(backbone, pretrained=pretrained, weights=weights, last_stride=last_stride)
        self.backbone = backbone
        self.global_branch = GlobalBranch(self.backbone.out_channels, num_classes)
        self.embedding_dim = self.backbone.out_channels

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        _, f4 = self.backbone(images)
        feat, bn_feat, logits = self.global_branch(f4)
        if not self.training:
            return F.normalize(bn_feat, dim=1)
        return {"global_feat": feat, "global_logits": logits}
