"""Evaluation: ranking metrics (CMC, mAP, mINP), re-ranking and the distributed ReID metric."""

from .distance import euclidean_distance
from .rank import evaluate_features, evaluate_rank
from .rerank import re_ranking, re_ranking_features

__all__ = ["ReIDMetric", "evaluate_rank", "evaluate_features", "euclidean_distance", "re_ranking",
           "re_ranking_features"]


def __getattr__(name: str):
    # ReIDMetric needs torchmetrics (about 4 s to import); the evaluate command ranks without it.
    if name == "ReIDMetric":
        from .metric import ReIDMetric

        return ReIDMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
