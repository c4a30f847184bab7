"""Evaluation: ranking metrics (CMC, mAP, mINP) and the distributed ReID retrieval metric."""

from .metric import ReIDMetric
from .rank import evaluate_rank

__all__ = ["ReIDMetric", "evaluate_rank"]
