"""Losses: identity, triplet and their weighted composition."""

from .composite import ReIDLoss
from .identity import cross_entropy_label_smooth
from .triplet import batch_hard_triplet_loss, pairwise_euclidean

__all__ = ["ReIDLoss", "batch_hard_triplet_loss", "cross_entropy_label_smooth", "pairwise_euclidean"]
