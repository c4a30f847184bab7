"""Evaluation: ranking metrics (CMC, mAP, mINP), re-ranking and the distributed ReID metric."""

from .distance import euclidean_distance
from .metric import ReIDMetric
from .rank import evaluate_features, evaluate_rank
from .rerank import re_ranking, re_ranking_features

__all__ = ["ReIDMetric", "evaluate_rank", "evaluate_features", "euclidean_distance", "re_ranking",
           "re_ranking_features"]
