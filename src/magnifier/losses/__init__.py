"""Losses: identity, triplet, parsing, semantic diversity, attributes and their weighted composition."""

from .attributes import attribute_bce_loss
from .composite import ReIDLoss
from .diversity import semantic_diversity_loss
from .identity import cross_entropy_label_smooth
from .parsing import class_balanced_parsing_loss
from .triplet import batch_hard_triplet_loss, batch_hard_triplet_losses, gathered_batch_hard_triplet_loss, pairwise_euclidean

__all__ = [
    "ReIDLoss",
    "attribute_bce_loss",
    "batch_hard_triplet_loss",
    "batch_hard_triplet_losses",
    "class_balanced_parsing_loss",
    "cross_entropy_label_smooth",
    "gathered_batch_hard_triplet_loss",
    "pairwise_euclidean",
    "semantic_diversity_loss",
]
