"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), exact and sparse.

The numbers equal those of the authors' public implementation as ported by torchreid
(``torchreid/utils/rerank.py``) given the same three distance matrices. Its conventions, kept
here:

* The (Q+G) x (Q+G) matrix ``D = [[q_q, q_g], [q_g^T, g_g]]`` is squared, each *column* is
  divided by its maximum and the result transposed: ``orig[i, j] = D[j, i]^2 / max_r D[r, i]^2``
  (for symmetric inputs: each row divided by its own maximum).
* ``R(i)``: the k-reciprocal neighbours of ``i`` among its ``k1 + 1`` nearest (itself
  included). For each ``c`` in ``R(i)``, its own set ``R_half(c)`` with
  ``round(k1 / 2) + 1`` neighbours (numpy's round-half-to-even) is added when more than 2/3 of
  it lies in ``R(i)``. Over the union ``E(i)``, ``V[i, e] = exp(-orig[i, e])``, normalised to
  sum 1 (float32).
* Query expansion (``k2 > 1``): each row of ``V`` is replaced by the mean of the rows of its
  ``k2`` nearest neighbours.
* ``jaccard[i, j] = 1 - s / (2 - s)`` with ``s = sum_k min(V[i, k], V[j, k])``, and the result
  is ``(1 - lambda) * jaccard + lambda * orig`` on the query x gallery block.

The reference builds dense (Q+G)^2 matrices (V, the ranks, the Jaccard term). Here only the
``k1 + 1`` nearest neighbours of each item and the sparse ``V`` exist; the distance rows are
visited in blocks, once, and the Jaccard term is a sparse min-product per block of queries.
:func:`re_ranking_features` computes the distance blocks from embeddings on the fly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy import sparse

from .distance import GalleryNorms

__all__ = ["re_ranking", "re_ranking_features"]

# Distance entries per block of rows (float32): 16M entries = 64 MB.
_BLOCK_ELEMENTS = 1 << 24
# (query, gallery, shared item) triples, and query x gallery entries, per block of the
# Jaccard step.
_PAIRS_PER_BLOCK = 1 << 21
_SHARED_ELEMENTS = 1 << 22


def _as_float32(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if int(k1) < 1:
        raise ValueError(f"k1 must be >= 1, got {k1}")
    if not 1 <= int(k2) <= int(k1) + 1:
        raise ValueError(f"k2 must be between 1 and k1 + 1 = {int(k1) + 1}, got {k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _reciprocal(nearest: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """(B, k+1) mask: is ``nearest[i, a]`` (a <= k) a k-reciprocal neighbour of ``i``?"""
    fwd = nearest[rows, : k + 1]
    back = nearest[fwd, : k + 1]  # (B, k+1, k+1)
    return (back == rows[:, None, None]).any(axis=2)


def _expansion_sets(nearest: np.ndarray, k1: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal set ``E(i)`` of every item, as (item, neighbour) pairs.

    Args:
        nearest: (N, k1+1) indices of each item's nearest items, closest first.

    Returns:
        ``rows``, ``cols`` (int64): ``cols[t]`` belongs to ``E(rows[t])``; sorted by row, then
        column, without duplicates.
    """
    n = nearest.shape[0]
    kh = int(np.around(k1 / 2.0))
    all_rows = np.arange(n)
    half = np.concatenate([_reciprocal(nearest, kh, all_rows[s:s + block])
                           for s in range(0, n, block)])  # (N, kh+1) R_half masks
    half_size = half.sum(axis=1)
    out_rows, out_cols = [], []
    for s in range(0, n, block):
        rows = all_rows[s:s + block]
        b = rows.shape[0]
        fwd = nearest[rows]  # (B, k1+1)
        recip = _reciprocal(nearest, k1, rows)  # R(i) mask
        cand_sets = nearest[fwd, : kh + 1]  # (B, k1+1, kh+1): R_half candidates of each c
        cand_mask = half[fwd]
        in_r = ((cand_sets[..., None] == fwd[:, None, None, :]) & recip[:, None, None, :]).any(-1)
        overlap = (in_r & cand_mask).sum(axis=2)
        # The reference's test, in the same float64 arithmetic: |R_half(c) & R(i)| > 2/3 |R_half(c)|.
        take = recip & (overlap > 2.0 / 3 * half_size[fwd])
        members = np.concatenate(
            [np.where(recip, fwd, n),
             np.where(take[..., None] & cand_mask, cand_sets, n).reshape(b, -1)], axis=1)
        members.sort(axis=1)
        keep = members < n
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r, c = np.nonzero(keep)
        out_rows.append(rows[r])
        out_cols.append(members[r, c])
    return np.concatenate(out_rows), np.concatenate(out_cols)


def _column_neighbours(pieces: list[torch.Tensor], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest rows and maxima down the columns of vertically stacked blocks of D.

    Args:
        pieces: (R_p, B) blocks (any strides) whose rows, stacked in order, are all N items.
        k: neighbours wanted.

    Returns:
        ``nearest`` (B, k) int64 row indices in ascending order of distance, and the squared
        column maxima (B,) float32.
    """
    values, indices, peaks, offset = [], [], [], 0
    for x in pieces:
        v, i = torch.topk(x, min(k, x.shape[0]), dim=0, largest=False, sorted=False)
        values.append(v)
        indices.append(i + offset)
        peaks.append(x.max(dim=0).values)
        offset += x.shape[0]
    v, pos = torch.topk(torch.cat(values), k, dim=0, largest=False, sorted=True)
    nearest = torch.gather(torch.cat(indices), 0, pos).t()
    peak = torch.stack(peaks).max(dim=0).values
    return nearest.numpy(), peak.square().numpy()


def _re_rank(
    num_q: int,
    num_g: int,
    scan: Callable[..., None],
    pair_values: Callable[[np.ndarray, np.ndarray], np.ndarray],
    k1: int,
    k2: int,
    lambda_value: float,
) -> np.ndarray:
    """The shared core of both entry points.

    With ``M[i, j] = D[j, i]^2`` over all N = Q + G items (queries first):

    Args:
        scan: ``(k, step, out, nearest, row_max)``: one pass over the distances, ``step`` items
            at a time, filling each item's ``k`` nearest items ``nearest`` (N, k) int64 in
            ascending order of ``M[i, :]``, the row maxima ``row_max`` (N,) float32
            (``max_j M[i, j]``) and ``out`` (Q, G) with ``M[i, Q + j] / row_max[i]`` (the
            normalised original query x gallery distances).
        pair_values: ``(i, j) -> M[i, j]`` for 1-D index arrays.

    Returns:
        (Q, G) float32 re-ranked distances.
    """
    n = num_q + num_g
    k = min(k1 + 1, n)
    # The output starts as the normalised original distances of the query x gallery block and
    # is turned into the final distances in place, so no second (Q, G) matrix is needed.
    out = np.empty((num_q, num_g), dtype=np.float32)
    nearest = np.empty((n, k), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float32)
    scan(k, max(1, _BLOCK_ELEMENTS // n), out, nearest, row_max)
    if k < k1 + 1:  # fewer items than neighbours asked for: every item is a neighbour
        k1 = k - 1

    rows, cols = _expansion_sets(nearest, k1, max(1, (1 << 16) // (k * k)))
    weight = np.exp(-(pair_values(rows, cols) / row_max[rows])).astype(np.float32)
    total = np.zeros(n, dtype=np.float32)
    np.add.at(total, rows, weight)
    v = sparse.csr_matrix((weight / total[rows], (rows, cols)), shape=(n, n), dtype=np.float32)
    if k2 != 1:
        # Mean of the V rows of each item's k2 nearest neighbours.
        avg = sparse.csr_matrix((np.ones(n * k2, dtype=np.float32),
                                 (np.repeat(np.arange(n), k2), nearest[:, :k2].reshape(-1))),
                                shape=(n, n))
        v = (avg @ v).astype(np.float32) / np.float32(k2)
        v = sparse.csr_matrix(v)
    v.sort_indices()

    # Jaccard term: s[i, j] = sum_k min(V[i, k], V[j, k]) for queries i and gallery items j,
    # walking the gallery's items column by column (CSC) from each query's non-zeros.
    gal = sparse.csc_matrix(v[num_q:])
    col_ptr, gal_rows, gal_vals = gal.indptr, gal.indices, gal.data
    col_len = np.diff(col_ptr)
    vq = v[:num_q]
    nz_query = np.repeat(np.arange(num_q), np.diff(vq.indptr))
    work_per_query = np.bincount(nz_query, weights=col_len[vq.indices], minlength=num_q)
    # (1 - lambda) * jaccard + lambda * orig, where jaccard = 1 wherever nothing is shared.
    keep, one = np.float32(lambda_value), np.float32(1.0 - lambda_value)
    max_rows = max(1, _SHARED_ELEMENTS // num_g)
    start = 0
    while start < num_q:
        stop = start + 1
        budget = work_per_query[start]
        while (stop < num_q and budget + work_per_query[stop] <= _PAIRS_PER_BLOCK
               and stop - start < max_rows):
            budget += work_per_query[stop]
            stop += 1
        sub = vq[start:stop]
        q_local = np.repeat(np.arange(stop - start), np.diff(sub.indptr))
        lengths = col_len[sub.indices]
        first = col_ptr[sub.indices]
        offsets = np.repeat(first - np.cumsum(lengths) + lengths, lengths)
        pos = np.arange(lengths.sum()) + offsets
        mins = np.minimum(np.repeat(sub.data, lengths), gal_vals[pos])
        shared = np.bincount(np.repeat(q_local, lengths) * num_g + gal_rows[pos], weights=mins,
                             minlength=(stop - start) * num_g)
        block_out = out[start:stop].reshape(-1)
        block_out *= keep
        block_out += one
        nz = np.flatnonzero(shared)
        s_nz = shared[nz]
        block_out[nz] -= (one * (s_nz / (2.0 - s_nz))).astype(np.float32)
        start = stop
    return out


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked query x gallery distances from the three distance matrices.

    Args:
        q_g_dist: (Q, G) query-gallery distances (numpy or torch; e.g. Euclidean).
        q_q_dist: (Q, Q) query-query distances.
        g_g_dist: (G, G) gallery-gallery distances.
        k1: neighbours of the k-reciprocal sets (20 in the paper).
        k2: neighbours of the query expansion (6; 1 switches it off).
        lambda_value: weight of the original distance (0.3).

    Returns:
        (Q, G) float32 numpy array, equal (to float32 rounding) to the reference
        implementation's output; see the module docstring for its conventions.

    Raises:
        ValueError: on inconsistent shapes, NaN/infinite distances, empty sets or parameters
            out of range.
    """
    _check_params(k1, k2, lambda_value)
    qg = _as_float32(q_g_dist, "q_g_dist")
    qq = _as_float32(q_q_dist, "q_q_dist")
    gg = _as_float32(g_g_dist, "g_g_dist")
    num_q, num_g = qg.shape
    if qq.shape != (num_q, num_q) or gg.shape != (num_g, num_g):
        raise ValueError(
            f"q_q_dist must be ({num_q}, {num_q}) and g_g_dist ({num_g}, {num_g}) for q_g_dist "
            f"of shape {qg.shape}; got {qq.shape} and {gg.shape}"
        )
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty query or gallery set: q_g_dist has shape {qg.shape}")

    tqg, tqq, tgg = (torch.from_numpy(x) for x in (qg, qq, gg))
    if any(bool((t < 0).any()) for t in (tqg, tqq, tgg)):
        # Squaring reorders negative values: rank their squares, as the reference does.
        tqg, tqq, tgg = (t.abs() for t in (tqg, tqq, tgg))

    def scan(k: int, step: int, out: np.ndarray, nearest: np.ndarray, row_max: np.ndarray):
        # Row i of M is column i of D, so the neighbours and maxima are taken down column slabs
        # of the two blocks of D stacked in each column: no transposed copy is ever made.
        # Query column i: q_q[:, i] over q_g[i, :]; gallery column j: q_g[:, j] over g_g[:, j].
        for s in range(0, num_q, step):
            e = min(s + step, num_q)
            nearest[s:e], row_max[s:e] = _column_neighbours([tqq[:, s:e], tqg[s:e].t()], k)
            np.divide(np.square(qg[s:e]), row_max[s:e, None], out=out[s:e])
        for s in range(0, num_g, step):
            e = min(s + step, num_g)
            nearest[num_q + s:num_q + e], row_max[num_q + s:num_q + e] = _column_neighbours(
                [tqg[:, s:e], tgg[:, s:e]], k)

    def pair_values(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        # M[i, j] = D[j, i]^2, looked up in the block of D that holds (j, i).
        out = np.empty(i.shape[0], dtype=np.float32)
        for jq in (True, False):
            for iq in (True, False):
                sel = ((j < num_q) == jq) & ((i < num_q) == iq)
                a, b = j[sel] - (0 if jq else num_q), i[sel] - (0 if iq else num_q)
                mat = (qq if iq else qg) if jq else (qg.T if iq else gg)
                out[sel] = mat[a, b]
        return np.square(out)

    return _re_rank(num_q, num_g, scan, pair_values, int(k1), int(k2), float(lambda_value))


def re_ranking_features(query_features, gallery_features, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> np.ndarray:
    """:func:`re_ranking` of the Euclidean distances between embeddings, without the matrices.

    The distances of all Q + G items are computed block by block (float32 matrix products on
    the features' device) and only each item's ``k1 + 1`` nearest neighbours, its farthest
    distance and the query x gallery block are kept; the few other distances the weights need
    are recomputed from the features. Memory: the features, the returned (Q, G) matrix, one
    block of distance rows (64 MB) and the sparse sets (a few hundred entries per item).

    Args:
        query_features: (Q, D) embeddings (numpy or torch).
        gallery_features: (G, D) embeddings.
        k1, k2, lambda_value: as for :func:`re_ranking`.

    Returns:
        (Q, G) float32 numpy array, equal to ``re_ranking`` of the Euclidean distance matrices
        of these features.
    """
    _check_params(k1, k2, lambda_value)
    qf = torch.as_tensor(query_features).float()
    gf = torch.as_tensor(gallery_features).float().to(qf.device)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"features must be (Q, D) and (G, D) with the same D, got {tuple(qf.shape)} and "
            f"{tuple(gf.shape)}"
        )
    if qf.shape[0] == 0 or gf.shape[0] == 0:
        raise ValueError(f"empty query or gallery set: {qf.shape[0]} queries, {gf.shape[0]} gallery items")
    feats = torch.cat([qf, gf])
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("features contain NaN or infinite values")
    norms = GalleryNorms(feats)
    sq = norms.sq

    num_q, n = qf.shape[0], feats.shape[0]

    def scan(k: int, step: int, out: np.ndarray, nearest: np.ndarray, row_max: np.ndarray):
        # Rows of squared distances from the embeddings, block by block (D is symmetric here).
        for s in range(0, n, step):
            e = min(s + step, n)
            m = norms.distance(feats[s:e], squared=True)
            top = torch.topk(m, k, dim=1, largest=False, sorted=True).indices
            nearest[s:e] = top.cpu().numpy()
            peak = m.max(dim=1).values
            row_max[s:e] = peak.cpu().numpy()
            if s < num_q:
                q = min(e, num_q) - s
                out[s:s + q] = (m[:q, num_q:] / peak[:q, None]).cpu().numpy()

    def pair_values(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.empty(i.shape[0], dtype=np.float32)
        step = max(1, (1 << 23) // feats.shape[1])  # two (step, D) gathers of 32 MB
        for s in range(0, i.shape[0], step):
            a = torch.from_numpy(i[s:s + step]).to(feats.device)
            b = torch.from_numpy(j[s:s + step]).to(feats.device)
            d = sq[a] + sq[b] - 2 * (feats[a] * feats[b]).sum(dim=1)
            out[s:s + step] = d.clamp_(min=0).cpu().numpy()
        return out

    return _re_rank(num_q, gf.shape[0], scan, pair_values, int(k1), int(k2), float(lambda_value))
