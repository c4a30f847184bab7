"""Models: backbones, MagnifierNet's branches, MagnifierNet and the strong baseline."""

from .attributes import AttributeBranch
from .backbones import ResNetBackbone
from .baseline import Baseline
from .branches import GlobalBranch, ParsingHead, SemanticFusionBranch, SemanticRegularizationBranch
from .magnifier import MagnifierNet

__all__ = [
    "AttributeBranch",
    "Baseline",
    "GlobalBranch",
    "MagnifierNet",
    "ParsingHead",
    "ResNetBackbone",
    "SemanticFusionBranch",
    "SemanticRegularizationBranch",
]
