"""Models: backbones and the ReID networks built on them."""

from .backbones import ResNetBackbone
from .baseline import Baseline

__all__ = ["Baseline", "ResNetBackbone"]
