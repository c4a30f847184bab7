"""Query-vs-gallery retrieval metric for validation, correct under DDP."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .distance import euclidean_distance
from .rank import evaluate_features

__all__ = ["ReIDMetric", "euclidean_distance"]


class ReIDMetric(Metric):
    """Rank-1/5/10, mAP and mINP of query-vs-gallery retrieval (Market-1501 protocol).

    Every validation batch (query and gallery images mixed) is passed to :meth:`update`; at the
    end, :meth:`compute` gathers all ranks' states (torchmetrics ``cat`` reduction), drops
    duplicated samples (a ``DistributedSampler`` pads the last ranks by repeating samples),
    orders samples by dataset index so the result does not depend on the number or order of
    ranks, and ranks the float32 Euclidean distances block by block with
    :func:`~magnifier.evaluation.rank.evaluate_features` (the full matrix never exists).

    Args:
        max_rank: length of the CMC curve computed by
            :func:`~magnifier.evaluation.rank.evaluate_rank` (raised to 10 internally so that
            ``rank10`` is always exact).
        keep_features: also keep, in ``last_result``, the samples in dataset-index order:
            ``features`` (N, D) float32 and ``pids``, ``camids``, ``index`` (N,) int64,
            ``is_query`` (N,) bool, as numpy arrays (what a report's ranked lists are drawn from).
        **kwargs: forwarded to :class:`torchmetrics.Metric` (``dist_sync_on_step``,
            ``process_group``, ``sync_on_compute``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, max_rank: int = 50, keep_features: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keep_features = bool(keep_features)
        if int(max_rank) < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.max_rank = int(max_rank)
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("pids", default=[], dist_reduce_fx="cat")
        self.add_state("camids", default=[], dist_reduce_fx="cat")
        self.add_state("is_query", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(
        self,
        features: torch.Tensor,
        pids: torch.Tensor,
        camids: torch.Tensor,
        is_query: torch.Tensor,
        indices: torch.Tensor,
    ) -> None:
        """Store one batch.

        Args:
            features: (N, D) float embeddings (expected L2-normalised, not required).
            pids: (N,) int person ids.
            camids: (N,) int camera ids.
            is_query: (N,) bool, True for query samples, False for gallery samples.
            indices: (N,) long dataset sample indices, unique per sample across query and
                gallery; used to remove the duplicates of distributed padding.
        """
        features = torch.as_tensor(features)
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
        n = features.shape[0]
        columns = {}
        for name, value in (("pids", pids), ("camids", camids), ("is_query", is_query),
                            ("indices", indices)):
            value = torch.as_tensor(value, device=features.device).reshape(-1)
            if value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} entries, features has {n} rows")
            columns[name] = value
        self.features.append(features.detach().float())
        self.pids.append(columns["pids"].long())
        self.camids.append(columns["camids"].long())
        self.is_query.append(columns["is_query"].bool())
        self.indices.append(columns["indices"].long())

    def compute(self) -> dict[str, torch.Tensor]:
        """Metrics over everything seen (all ranks after synchronisation).

        Returns:
            dict of 0-dim float32 tensors: ``rank1``, ``rank5``, ``rank10`` (CMC values),
            ``mAP``, ``mINP``; all fractions in [0, 1], on the metric's device.

        Raises:
            ValueError: when nothing was seen, the query or gallery set is empty, or no query
                has a true match in the gallery.
        """
        if isinstance(self.features, list) and len(self.features) == 0:
            raise ValueError("ReIDMetric.compute() called before any update()")
        features = dim_zero_cat(self.features)
        pids = dim_zero_cat(self.pids)
        camids = dim_zero_cat(self.camids)
        is_query = dim_zero_cat(self.is_query).bool()
        indices = dim_zero_cat(self.indices)

        # Keep one row per sample index, ordered by index (independent of rank order).
        order = torch.argsort(indices, stable=True)
        sorted_idx = indices[order]
        keep = torch.ones_like(sorted_idx, dtype=torch.bool)
        keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
        order = order[keep]
        features, pids, camids, is_query, indices = (
            features[order], pids[order], camids[order], is_query[order], indices[order]
        )

        q, g = is_query, ~is_query
        if not bool(q.any()) or not bool(g.any()):
            raise ValueError(
                f"ReIDMetric needs query and gallery samples, got {int(q.sum())} query and "
                f"{int(g.sum())} gallery samples"
            )
        result = evaluate_features(
            features[q],
            features[g],
            pids[q].cpu().numpy(),
            pids[g].cpu().numpy(),
            camids[q].cpu().numpy(),
            camids[g].cpu().numpy(),
            max_rank=max(self.max_rank, 10),
            per_query=True,
        )
        cmc = result["cmc"]
        # The whole result (CMC, per-query AP) for a report of this evaluation (magnifier.train).
        if self.keep_features:
            result.update(features=features.cpu().numpy(), pids=pids.cpu().numpy(), camids=camids.cpu().numpy(),
                          index=indices.cpu().numpy(), is_query=is_query.cpu().numpy())
        self.last_result = result

        def scalar(value: float) -> torch.Tensor:
            return torch.tensor(float(value), dtype=torch.float32, device=self.device)

        return {
            "rank1": scalar(cmc[0]),
            "rank5": scalar(cmc[4]),
            "rank10": scalar(cmc[9]),
            "mAP": scalar(result["mAP"]),
            "mINP": scalar(result["mINP"]),
        }
