"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), exact, sparse and streamed.

The result equals (to float32 rounding) the authors' public implementation as ported by torchreid
(``torchreid/utils/rerank.py``) given the same three distance matrices. Its conventions, all kept:

* ``D = [[q_q, q_g], [q_g^T, g_g]]`` over the ``N = Q + G`` items (queries first) is squared in
  the inputs' precision and cast to float32; each *column* is divided by its maximum and the
  result is transposed::

      orig[i, j] = D[j, i]^2 / max_r D[r, i]^2

  so row ``i`` of ``orig`` is column ``i`` of ``D`` (``[q_q^T, q_g]`` for the queries,
  ``[q_g^T, g_g^T]`` for the gallery); for symmetric inputs, each row over its own maximum.
* ``top(i, k)``: the ``k`` first items of row ``i`` of ``orig`` in ascending order (``i`` itself
  first when its distance to itself is the smallest).
* ``R(i)``: the ``j`` in ``top(i, k1 + 1)`` with ``i`` in ``top(j, k1 + 1)``. ``R_half(c)``: the
  same with ``int(np.around(k1 / 2)) + 1`` neighbours (round half to even).
* ``E(i)``: ``R(i)`` plus, for each ``c`` in ``R(i)`` with
  ``|R_half(c) & R(i)| > 2/3 |R_half(c)|``, all of ``R_half(c)``.
* ``V[i, e] = exp(-orig[i, e]) / sum_e' exp(-orig[i, e'])`` over ``e`` in ``E(i)``, 0 elsewhere
  (float32).
* Query expansion unless ``k2 == 1``: row ``i`` of ``V`` becomes the mean of the rows
  ``top(i, k2)``.
* ``s[i, j] = sum_k min(V[i, k], V[j, k])``, ``jaccard = 1 - s / (2 - s)`` and the result is
  ``(1 - lambda) * jaccard + lambda * orig`` on the query x gallery block.

The reference holds several dense N x N matrices (the argsort of every row, ``V``, its query
expansion: over 5 GB at Market-1501 size). Here the distance rows are visited once,
block by block, keeping only the ``k1 + 1`` nearest items of each row (``torch.topk``) and its
maximum; the sets ``R``, ``R_half`` and ``E`` are tested for blocks of rows at once on those
neighbour lists; ``V`` is a scipy CSR matrix; the few distances its weights need are gathered
afterwards; the Jaccard term is a sparse min-product over blocks of queries (every
``(query, shared item, gallery item)`` triple is listed with numpy and summed by ``bincount``).
:func:`re_ranking_features` does the same from embeddings without any distance matrix: it
computes each block of the symmetric N x N distances once and uses it for both its rows and its
columns.

Ties between distances are ordered arbitrarily (as in the reference, whose ``np.argsort`` is not
stable): inputs with exactly tied neighbours may give other, equally valid, results.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from scipy import sparse

__all__ = ["re_ranking", "re_ranking_features"]

# Entries of distance rows per block (matrix path): 2^24 float32 = 64 MB.
_BLOCK_ELEMENTS = 1 << 24
# Rows of a matrix per tile of a transposed copy.
_TILE_ROWS = 256
# Rows per block of the features path (a block of distances is at most its square).
_FEATURE_BLOCK_ROWS = 2048
# Blocks of nearest items gathered before they are folded into the running lists.
_MERGE_BLOCKS = 8
# Entries of the per-block membership table of the expansion step (bytes).
_MARK_ELEMENTS = 1 << 24
# Dense (queries x gallery) float64 sums per block of the Jaccard step.
_JACCARD_ELEMENTS = 1 << 22
# Feature pairs per block when gathering exact distances.
_GATHER_PAIRS = 1 << 13

# Gathers D[j, i]^2 (float32, not normalised) for index arrays i (rows of ``orig``) and j.
PairDistances = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_params(k1, k2, lambda_value) -> None:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if k1 < 1:
        raise ValueError(f"k1 must be at least 1, got {k1}")
    if not 1 <= k2 <= k1 + 1:
        raise ValueError(f"k2 must be in [1, k1 + 1] = [1, {k1 + 1}], got {k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _check_rows(row_max: np.ndarray, what: str) -> None:
    """Every row of ``orig`` needs a finite, positive maximum to be normalised."""
    if not np.isfinite(row_max).all():
        raise ValueError(f"{what} contain NaN or infinite values (or overflow float32 squared)")
    if not (row_max > 0).all():
        raise ValueError(f"{what}: item {int(np.argmin(row_max))} has all its distances zero")


def _as_matrix(x, name: str) -> np.ndarray:
    """A 2-D floating numpy view of ``x`` (numpy or torch), kept in its own precision."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _square_transposed(dst: np.ndarray, src: np.ndarray, pool: ThreadPoolExecutor,
                       threads: int) -> None:
    """``dst[:] = float32(src.T ** 2)`` for a (M, B) ``src``, squared in its own precision.

    By tiles of rows (a plain transposed pass misses the cache at every element), shared among
    ``threads`` of the pool (numpy's loops release the GIL).
    """
    tiles = range(0, src.shape[0], _TILE_ROWS)
    parts = max(1, min(threads, len(tiles)))

    def square(part: int) -> None:
        for a in tiles[part::parts]:
            np.square(src[a:a + _TILE_ROWS].T, out=dst[:, a:a + _TILE_ROWS], casting="same_kind")

    list(pool.map(square, range(parts)))


def _spans(num_q: int, n: int, step: int) -> list[tuple[int, int]]:
    """Blocks ``[start, stop)`` of at most ``step`` items, queries and gallery items apart."""
    return ([(s, min(s + step, num_q)) for s in range(0, num_q, step)]
            + [(s, min(s + step, n)) for s in range(num_q, n, step)])


def _reciprocal(top: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(B, k) mask: is ``top[i, a]`` a k-reciprocal neighbour of ``i``, i.e. is ``i`` among the
    ``k`` first of ``top[top[i, a]]``, for ``i`` in ``rows``?"""
    fwd = top[rows, :k]
    return (top[fwd, :k] == rows[:, None, None]).any(axis=2)


def _expanded_sets(top: np.ndarray, k: int, k_half: int) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal sets ``E(i)`` of all items, as a CSR structure.

    Args:
        top: (N, >= k) nearest items of every item, closest first.
        k: ``k1 + 1`` (at most N); ``k_half``: ``int(np.around(k1 / 2)) + 1`` (at most k).

    Returns:
        ``indptr`` (N + 1,) and ``indices``: ``E(i)`` is ``indices[indptr[i]:indptr[i + 1]]``,
        sorted and without repeats, as ``np.unique`` gives it.
    """
    n = top.shape[0]
    top = top[:, :k]
    every = np.arange(n)
    half_mask = _reciprocal(top, every, k_half)  # R_half(c) = top[c, :k_half][half_mask[c]]
    half_size = half_mask.sum(axis=1)
    rows_per_block = max(1, min(n, _MARK_ELEMENTS // n))
    in_r = np.zeros(rows_per_block * n, dtype=bool)  # in_r[b * n + j]: j in R(rows[b])
    counts, members = [], []
    for start in range(0, n, rows_per_block):
        rows = every[start:start + rows_per_block]
        base = (np.arange(rows.shape[0]) * n)[:, None]
        fwd = top[rows]  # (B, k)
        recip = _reciprocal(top, rows, k)  # R(i) = fwd[recip]
        marks = (base + fwd)[recip]
        in_r[marks] = True
        cand = top[fwd, :k_half]  # (B, k, k_half): top(c, k_half) of every candidate c
        cand_mask = half_mask[fwd]  # ... and which of them form R_half(c)
        overlap = (in_r[base[:, :, None] + cand] & cand_mask).sum(axis=2)
        # The reference's test, in its float64 arithmetic: |R_half(c) & R(i)| > 2/3 |R_half(c)|.
        take = recip & (overlap > 2.0 / 3 * half_size[fwd])
        in_r[marks] = False
        union = np.concatenate(
            [np.where(recip, fwd, n), np.where(take[:, :, None] & cand_mask, cand, n)
             .reshape(rows.shape[0], -1)], axis=1)
        union.sort(axis=1)
        keep = union < n
        keep[:, 1:] &= union[:, 1:] != union[:, :-1]
        counts.append(keep.sum(axis=1))
        members.append(union[keep])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    return indptr, np.concatenate(members)


def _encode(top: np.ndarray, row_max: np.ndarray, pair_sq: PairDistances, k1: int,
            k2: int) -> sparse.csr_matrix:
    """The (N, N) sparse float32 ``V`` (after query expansion when ``k2 > 1``)."""
    n = top.shape[0]
    k = min(k1 + 1, n)
    indptr, cols = _expanded_sets(top, k, min(int(np.around(k1 / 2.0)) + 1, n))
    rows = np.repeat(np.arange(n), np.diff(indptr))
    weight = np.exp(-(pair_sq(rows, cols) / row_max[rows]))
    total = np.bincount(rows, weights=weight, minlength=n).astype(np.float32)
    v = sparse.csr_matrix((weight / total[rows], cols, indptr), shape=(n, n))
    k2 = min(k2, n)
    if k2 > 1:
        # Row i becomes the mean of the rows of V of top(i, k2): (A @ V) / k2 with A of 0/1.
        pick = sparse.csr_matrix(
            (np.ones(n * k2, dtype=np.float32), top[:, :k2].reshape(-1),
             np.arange(0, n * k2 + 1, k2)), shape=(n, n))
        v = pick @ v
        v.data /= np.float32(k2)
    return v


def _jaccard_into(out: np.ndarray, v: sparse.csr_matrix, lambda_value: float) -> None:
    """``out = (1 - lambda) * jaccard + lambda * out`` for the (Q, G) block, in place.

    ``out`` holds ``orig[:Q, Q:]`` on entry. For a block of queries, every triple
    ``(query i, item k, gallery item j)`` with ``V[i, k] > 0`` and ``V[j, k] > 0`` is listed
    (the gallery rows of column ``k`` come from a CSC copy) and ``min(V[i, k], V[j, k])`` is
    summed per ``(i, j)`` with ``np.bincount``.
    """
    num_q, num_g = out.shape
    vq = v[:num_q]
    gallery = v[num_q:].tocsc()
    col_start, col_len = gallery.indptr[:-1], np.diff(gallery.indptr)
    queries_per_block = max(1, _JACCARD_ELEMENTS // num_g)
    for start in range(0, num_q, queries_per_block):
        block = vq[start:start + queries_per_block]
        nq = block.shape[0]
        lengths = col_len[block.indices]
        # Positions in the CSC arrays of all gallery non-zeros of every query non-zero's column.
        first = np.repeat(col_start[block.indices] - (np.cumsum(lengths) - lengths), lengths)
        pos = first + np.arange(first.shape[0])
        shared = np.minimum(np.repeat(block.data, lengths), gallery.data[pos])
        query = np.repeat(np.repeat(np.arange(nq), np.diff(block.indptr)), lengths)
        s = np.bincount(query * num_g + gallery.indices[pos], weights=shared,
                        minlength=nq * num_g).astype(np.float32).reshape(nq, num_g)
        # The reference's float32 operations, in place: (1 - s / (2 - s)) * (1 - lambda)
        # + orig * lambda.
        np.divide(s, np.subtract(2.0, s, dtype=np.float32), out=s)
        np.subtract(1.0, s, out=s)
        s *= np.float32(1 - lambda_value)
        block_out = out[start:start + nq]
        block_out *= np.float32(lambda_value)
        block_out += s


def _re_rank(top: np.ndarray, row_max: np.ndarray, pair_sq: PairDistances, out: np.ndarray,
             k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """The core of both entry points, from the nearest neighbours on.

    Args:
        top: (N, min(k1 + 1, N)) int64, ``top(i, k1 + 1)`` of every item.
        row_max: (N,) float32, ``max_r D[r, i]^2``.
        pair_sq: gathers ``D[j, i]^2`` (float32) for index arrays ``i``, ``j``.
        out: (Q, G) float32 holding ``orig[:Q, Q:]``; overwritten with the result.

    Returns:
        ``out``.
    """
    v = _encode(top, row_max, pair_sq, k1, k2)
    _jaccard_into(out, v, lambda_value)
    return out


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking of query x gallery distances, from the three distance matrices.

    Args:
        q_g_dist: (Q, G) query-gallery distances (numpy array or torch tensor, any float dtype;
            e.g. Euclidean distances, which the method squares).
        q_q_dist: (Q, Q) query-query distances.
        g_g_dist: (G, G) gallery-gallery distances. ``q_q_dist`` and ``g_g_dist`` need not be
            symmetric: row ``i`` of the method's matrix is *column* ``i`` of
            ``[[q_q, q_g], [q_g^T, g_g]]`` (see the module docstring).
        k1: size of the k-reciprocal neighbourhoods (20 in the paper).
        k2: neighbours averaged by the query expansion (6; 1 switches it off); at most k1 + 1.
        lambda_value: weight of the original distance, in [0, 1] (0.3).

    Returns:
        (Q, G) float32 numpy array, equal to torchreid's ``re_ranking`` on the same inputs up to
        float32 rounding (and the order of exactly tied distances).

    Raises:
        ValueError: a matrix not 2-D, shapes that do not fit together, an empty query or
            gallery set, NaN or infinite distances, an item whose distances are all zero, or
            ``k1``, ``k2``, ``lambda_value`` out of range.
    """
    _check_params(k1, k2, lambda_value)
    qg = _as_matrix(q_g_dist, "q_g_dist")
    qq = _as_matrix(q_q_dist, "q_q_dist")
    gg = _as_matrix(g_g_dist, "g_g_dist")
    num_q, num_g = qg.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty query or gallery set: q_g_dist has shape {qg.shape}")
    if qq.shape != (num_q, num_q) or gg.shape != (num_g, num_g):
        raise ValueError(f"q_q_dist {qq.shape} and g_g_dist {gg.shape} do not fit q_g_dist "
                         f"{qg.shape}: expected ({num_q}, {num_q}) and ({num_g}, {num_g})")
    n = num_q + num_g
    k = min(k1 + 1, n)
    top = np.empty((n, k), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float32)
    out = np.empty((num_q, num_g), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // n)
    buffer = np.empty((min(step, n), n), dtype=np.float32)
    threads = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(threads) as pool:
        for start, stop in _spans(num_q, n, step):
            # Rows of orig before normalisation: columns of [q_q; q_g^T] for queries, of
            # [q_g; g_g] for gallery items, squared in the inputs' precision, then float32.
            rows = buffer[:stop - start]
            if stop <= num_q:
                _square_transposed(rows[:, :num_q], qq[:, start:stop], pool, threads)
                np.square(qg[start:stop], out=rows[:, num_q:], casting="same_kind")
            else:
                cols = slice(start - num_q, stop - num_q)
                _square_transposed(rows[:, :num_q], qg[:, cols], pool, threads)
                _square_transposed(rows[:, num_q:], gg[:, cols], pool, threads)
            block = torch.from_numpy(rows)
            row_max[start:stop] = block.amax(dim=1).numpy()
            top[start:stop] = torch.topk(block, k, dim=1, largest=False).indices.numpy()
            if stop <= num_q:
                out[start:stop] = block[:, num_q:].div_(
                    torch.from_numpy(row_max[start:stop, None])).numpy()
    _check_rows(row_max, "the distances")

    def pair_sq(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        # D[j, i] from the block of D holding it.
        values = np.empty(i.shape[0], dtype=np.result_type(qg, qq, gg))
        iq, jq = i < num_q, j < num_q
        for sel, mat, r, c in ((iq & jq, qq, j, i), (iq & ~jq, qg, i, j - num_q),
                               (~iq & jq, qg, j, i - num_q), (~iq & ~jq, gg, j - num_q, i - num_q)):
            values[sel] = mat[r[sel], c[sel]]
        return np.square(values).astype(np.float32)

    return _re_rank(top, row_max, pair_sq, out, k1, k2, lambda_value)


def _as_features(x, name: str) -> torch.Tensor:
    x = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items, dims) matrix, got shape {tuple(x.shape)}")
    return x.float()


class _Workspace:
    """Reused flat float32 buffers: a fresh large tensor per block costs its page faults."""

    def __init__(self, device: torch.device):
        self.device, self.buffers = device, {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        size = int(np.prod(shape))
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < size:
            buf = self.buffers[name] = torch.empty(size, device=self.device)
        return buf[:size].view(*shape)


class _Nearest:
    """The running ``k`` nearest items (closest first) and largest distance of every row, fed
    with blocks of the symmetric distance matrix.

    The ``k`` nearest of each block are kept aside and folded into the running lists a few
    blocks at a time (one ``topk`` over them all), to spare small operations.
    """

    def __init__(self, n: int, k: int, device: torch.device):
        self.dist = torch.full((n, k), float("inf"), device=device)
        self.index = torch.zeros((n, k), dtype=torch.int64, device=device)
        self.max = torch.zeros(n, device=device)
        self.pending: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, r0: int, r1: int, block: torch.Tensor, c0: int) -> None:
        """Rows ``r0:r1`` against columns ``c0:c0 + block.shape[1]``."""
        k = self.dist.shape[1]
        d, i = torch.topk(block, min(k, block.shape[1]), dim=1, largest=False, sorted=False)
        torch.maximum(self.max[r0:r1], block.amax(dim=1), out=self.max[r0:r1])
        waiting = self.pending.setdefault((r0, r1), [])
        waiting.append((d, i + c0))
        if len(waiting) >= _MERGE_BLOCKS:
            self._fold(r0, r1)

    def _fold(self, r0: int, r1: int) -> None:
        waiting = self.pending.pop((r0, r1), [])
        if waiting:
            d = torch.cat([self.dist[r0:r1]] + [d for d, _ in waiting], dim=1)
            i = torch.cat([self.index[r0:r1]] + [i for _, i in waiting], dim=1)
            d, pos = torch.topk(d, self.dist.shape[1], dim=1, largest=False)
            self.index[r0:r1] = i.gather(1, pos)
            self.dist[r0:r1] = d

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, k) indices, (N, k) distances and (N,) row maxima, as numpy arrays."""
        for r0, r1 in list(self.pending):
            self._fold(r0, r1)
        return self.index.cpu().numpy(), self.dist.cpu().numpy(), self.max.cpu().numpy()


def re_ranking_features(query_features, gallery_features, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, chunk_size: int | None = None) -> np.ndarray:
    """k-reciprocal re-ranking of the Euclidean distances between embeddings, streamed.

    The same as ``re_ranking(d(q, g), d(q, q), d(g, g), k1, k2, lambda_value)`` with
    ``d(a, b) = ||a - b||_2`` (the distances of :func:`magnifier.evaluation.euclidean_distance`),
    without those matrices: the (Q+G)^2 squared distances ``||a||^2 + ||b||^2 - 2 a.b`` (clamped
    at 0, float32 matrix products on the features' device) are computed block by block, each
    block of the symmetric matrix once for its rows and its columns, keeping only the
    ``k1 + 1`` nearest items and the largest distance of every item, plus the (Q, G) block,
    which becomes the result. The distances the weights need beyond the nearest items are
    computed again from the features, pair by pair. Memory beyond the features and the result:
    two blocks of ``chunk_size^2`` floats and the sparse structures (a few hundred numbers per
    item). Items whose distances are equal to float32 rounding may be ordered otherwise than by
    a distance matrix computed separately.

    Args:
        query_features: (Q, D) embeddings (numpy array or torch tensor, on any device).
        gallery_features: (G, D) embeddings.
        k1, k2, lambda_value: as for :func:`re_ranking`.
        chunk_size: items per block of distances (default 2048: 16 MB blocks).

    Returns:
        (Q, G) float32 numpy array.

    Raises:
        ValueError: features not 2-D, of different widths or with NaN or infinite values, an
            empty query or gallery set, or parameters out of range.
    """
    _check_params(k1, k2, lambda_value)
    qf = _as_features(query_features, "query_features")
    gf = _as_features(gallery_features, "gallery_features").to(qf.device)
    num_q, num_g = qf.shape[0], gf.shape[0]
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query_features have {qf.shape[1]} dims but gallery_features "
                         f"{gf.shape[1]}")
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty query or gallery set: {num_q} queries, {num_g} gallery items")
    feats = torch.cat([qf, gf])
    del qf, gf
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("the features contain NaN or infinite values")
    sq = feats.pow(2).sum(dim=1)
    n, device = feats.shape[0], feats.device
    nearest = _Nearest(n, min(k1 + 1, n), device)
    out = torch.empty((num_q, num_g), dtype=torch.float32)
    work = _Workspace(device)
    spans = _spans(num_q, n, chunk_size or _FEATURE_BLOCK_ROWS)
    for a, (a0, a1) in enumerate(spans):
        for b0, b1 in spans[a:]:
            block = torch.addmm(sq[None, b0:b1], feats[a0:a1], feats[b0:b1].T, alpha=-2.0,
                                out=work.get("block", a1 - a0, b1 - b0))
            block.add_(sq[a0:a1, None]).clamp_(min=0)
            if a0 < num_q <= b0:
                out[a0:a1, b0 - num_q:b1 - num_q] = block
            nearest.add(a0, a1, block, b0)
            if b0 != a0:  # the block of the symmetric matrix below the diagonal
                nearest.add(b0, b1, work.get("transposed", b1 - b0, a1 - a0).copy_(block.T), a0)
    del work
    top, top_d, row_max = nearest.finish()
    _check_rows(row_max, "the squared distances")
    out = out.numpy()
    out /= row_max[:num_q, None]

    def pair_sq(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        # Most pairs are among the nearest items already kept; the others are recomputed.
        hit = top[i] == j[:, None]
        found = hit.any(axis=1)
        values = np.empty(i.shape[0], dtype=np.float32)
        values[found] = top_d[i[found], hit[found].argmax(axis=1)]
        miss = np.flatnonzero(~found)
        pairs = _Workspace(device)
        for s in range(0, miss.shape[0], _GATHER_PAIRS):
            part = miss[s:s + _GATHER_PAIRS]
            a, b = (torch.from_numpy(x[part]).to(device) for x in (i, j))
            fa = torch.index_select(feats, 0, a, out=pairs.get("a", len(part), feats.shape[1]))
            fb = torch.index_select(feats, 0, b, out=pairs.get("b", len(part), feats.shape[1]))
            dist = sq[a] + sq[b] - 2 * fa.mul_(fb).sum(dim=1)
            values[part] = dist.clamp_(min=0).cpu().numpy()
        return values

    return _re_rank(top, row_max, pair_sq, out, k1, k2, lambda_value)
