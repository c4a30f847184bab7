"""The strong baseline (Luo et al., "Bag of Tricks"): MagnifierNet with only its global branch."""

from __future__ import annotations

from .backbones import ResNetBackbone
from .magnifier import MagnifierNet


class Baseline(MagnifierNet):
    """ResNet (last stride 1) -> GAP -> BNNeck -> bias-free classifier.

    Train mode: ``model(images)`` with images (N, 3, H, W) returns ``global_feat`` (N, C4) for the
    triplet loss and ``global_logits`` (N, num_classes). Eval mode: the L2-normalised BN feature
    (N, C4). Needs no part label maps.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | ResNetBackbone = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        last_stride: int = 1,
    ):
        super().__init__(
            num_classes, backbone, pretrained, weights, last_stride, parsing=False, srb=False, sfb=False,
            classifier_bias=False,
        )
