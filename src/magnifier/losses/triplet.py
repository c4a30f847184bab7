"""Batch-hard triplet loss (Hermans et al.) on P x K batches, within one process or mined
across every rank of a distributed run."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from magnifier.errors import UserError

from .precision import float32_loss


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) and (M, D) (``y`` defaults to ``x``) -> (N, M) Euclidean distances, clamped so the
    sqrt gradient stays finite."""
    sx = x.pow(2).sum(1, keepdim=True)
    sy, y = (sx, x) if y is None else (y.pow(2).sum(1, keepdim=True), y)
    d2 = sx + sy.t() - 2.0 * x @ y.t()
    return d2.clamp_min(1e-12).sqrt()


def _hardest(distances: torch.Tensor, same: torch.Tensor, margin: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (..., A, M) from A anchors to M candidates (any leading dims: one pass for
    several embeddings of the same images), ``same`` (A, M) true where the identities match ->
    (mean over the A anchors of the loss on each anchor's farthest positive and nearest
    negative, fraction of those triplets already satisfied), each of shape (...)."""
    d_ap = distances.masked_fill(~same, float("-inf")).amax(-1)
    d_an = distances.masked_fill(same, float("inf")).amin(-1)
    if margin is None:
        loss = F.softplus(d_ap - d_an).mean(-1)
    else:
        loss = F.relu(d_ap - d_an + margin).mean(-1)
    return loss, (d_an > d_ap).float().mean(-1)


def _batch_hard_triplet_loss(
    features: torch.Tensor, pids: torch.Tensor, margin: float | None = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each anchor: its farthest positive and its nearest negative in the batch.

    features (N, D), pids (N,) -> (loss scalar, fraction of triplets already satisfied).
    ``margin=None`` uses the soft margin log(1 + exp(d_ap - d_an)). Runs in float32 because
    squared distances overflow float16.
    """
    return _hardest(pairwise_euclidean(features), pids.unsqueeze(0) == pids.unsqueeze(1), margin)


def _batch_hard_triplet_losses(
    features: Sequence[torch.Tensor], pids: torch.Tensor, margin: float | None = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batch_hard_triplet_loss` of T embeddings of the same N images in one mining pass.

    features: T tensors (N, D_t) (widths may differ: MagnifierNet's global 2048-d and fused
    1024-d features), pids (N,) -> (losses (T,), fractions satisfied (T,)), equal to T calls.
    The T distance matrices are stacked (T, N, N) and mined together with one identity mask:
    fewer, larger kernels than one pass per embedding.
    """
    distances = torch.stack([pairwise_euclidean(f) for f in features])
    return _hardest(distances, pids.unsqueeze(0) == pids.unsqueeze(1), margin)


class _GatherRows(torch.autograd.Function):
    """All-gather (n, ...) from each of W ranks into (W * n, ...), rank order, gradient included.

    Backward: every rank holds a gradient for all W * n rows (its anchors' distances reach other
    ranks' embeddings); their sum over ranks, restricted to this rank's n rows, is this rank's
    gradient. An all-reduce of the full (W * n, ...) gradient does that on every backend (Gloo has
    no reduce-scatter); the rows are a batch of embeddings, a few MiB at most.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _gathered_batch_hard_triplet_loss(
    features: torch.Tensor, pids: torch.Tensor, margin: float | None = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batch_hard_triplet_loss` whose anchors (this rank's) mine their hardest positive and
    negative among the embeddings of every rank of the default process group.

    features (n, D), pids (n,) on each of W ranks -> (mean over the n local anchors, fraction of
    their triplets satisfied). Without a process group, or with one rank, it is
    :func:`batch_hard_triplet_loss`.

    The gradient matches one process on the concatenated (W * n) batch after DDP's average over
    ranks. With L the 1-process loss (mean over all W * n anchors) and l_a one anchor's term, rank
    r back-propagates (1/n) sum over its anchors of l_a; the gather's backward sums over ranks, so
    its embeddings X_r receive (1/n) sum over all anchors of dl_a/dX_r = W dL/dX_r, and DDP's
    average (1/W) sum_r of the parameter gradients gives dL/dparameters. The other ranks' copies
    must carry gradient: a remote anchor whose hardest positive or negative is a local embedding
    sends gradient to it, which detached copies would drop. The mean of the loss over ranks is L.

    Every rank must call it with the same n (a P x K sampler with whole batches does); a
    mismatch is an error, not a hang. Identities may be split across ranks: positives are mined
    among the gathered rows too.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _batch_hard_triplet_loss(features, pids, margin)
    sizes = [torch.zeros(1, dtype=torch.long, device=features.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([features.shape[0]], device=features.device))
    if len({int(s) for s in sizes}) > 1:
        raise UserError(f"loss.triplet_gather needs the same batch size on every rank, got {[int(s) for s in sizes]}; "
                        "train with the P x K sampler's whole batches or set loss.triplet_gather=false")
    everyone = _GatherRows.apply(features)  # (W n, D)
    all_pids = [torch.empty_like(pids) for _ in sizes]
    dist.all_gather(all_pids, pids.contiguous())
    same = pids.unsqueeze(1) == torch.cat(all_pids).unsqueeze(0)  # (n, W n)
    return _hardest(pairwise_euclidean(features, everyone), same, margin)


# Wrapped by assignment rather than as a decorator so that `make mutation` (mutmut, which skips
# decorated functions) can reach the body.
batch_hard_triplet_loss = float32_loss(_batch_hard_triplet_loss)
batch_hard_triplet_losses = float32_loss(_batch_hard_triplet_losses)
gathered_batch_hard_triplet_loss = float32_loss(_gathered_batch_hard_triplet_loss)
