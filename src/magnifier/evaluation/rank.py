"""Ranking metrics for query-vs-gallery person re-identification: CMC, mAP and mINP.

Protocol (Market-1501, as used by torchreid, fast-reid and the "strong baseline"):

* For each query, gallery items with the same person id **and** the same camera id are
  removed ("junk"); every other gallery item is *valid*. A valid item with the query's person
  id (necessarily from another camera) is a *true match*.
* A query without any true match is skipped: it is left out of every average and counted in
  ``num_skipped_queries``.
* The valid gallery is ordered by ascending distance. Ties are broken by gallery index, i.e. the
  order is the one of ``numpy.argsort(row, kind="stable")``; the result is therefore fully
  deterministic and independent of the sorting algorithm.

With the true matches at 1-based ranks ``r_1 < r_2 < ... < r_m`` among the valid items:

* ``AP  = (1/m) * sum_i i / r_i`` (non-interpolated average precision),
* ``INP = m / r_m`` (inverse negative penalty, Ye et al., "Deep Learning for Person
  Re-identification: A Survey and Outlook"),
* ``CMC[k] = 1 if r_1 <= k + 1 else 0``.

Each is averaged over the valid queries.

Two exact implementations are provided:

``method="count"`` (default)
    Needs only the rank of every true match among the valid items, never a full sort of a row.
    With the true matches of a query sorted by (distance, gallery index), the rank of match ``i``
    among the valid items is ``1 + #{items before it} - #{junk items before it}``, where "before"
    is the lexicographic (distance, index) order. The junk items are few (same id), so their
    count is exact and cheap. For all items, the row's distances are mapped to ``B`` uniform
    bins spanning the closest to the farthest true match (plus an underflow and an overflow
    bin). The bin is a monotone function of the distance, computed identically for every item,
    so an item in a lower bin than a match precedes it and an item in a higher bin follows it:
    one histogram per row (``numpy.bincount``) and its cumulative sum count those. Only the
    items sharing a bin with a true match (about ``m * G / B`` per query) are compared exactly,
    distance then index. The result is exact, identical to the sort-based method including
    ties. Rows with infinite distances, or where a huge number of items share a bin with a
    match (massive ties), are handed to the sort-based method.
``method="sort"``
    Stable ``argsort`` of each row, cumulative sums of the match / valid indicators in sorted
    order. Simple and used as the exact fallback.

Both process the queries in chunks (bounded memory), in a few threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_rank", "AP_MODES", "METHODS"]

#: Supported average-precision definitions. (A trapezoidal and a CUHK03 variant may be added.)
AP_MODES = ("standard",)
#: Supported implementations; both give identical results.
METHODS = ("count", "sort")

# Number of (query, gallery) entries processed at once per thread; bounds the temporary memory
# to about 100 MB per thread for the sort-based method and about 30 MB for the counting one.
_CHUNK_ELEMENTS = 1 << 21


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = _to_numpy(distmat)
    q_pids = _to_numpy(q_pids).reshape(-1)
    g_pids = _to_numpy(g_pids).reshape(-1)
    q_camids = _to_numpy(q_camids).reshape(-1)
    g_camids = _to_numpy(g_camids).reshape(-1)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if q_pids.shape[0] != num_q or q_camids.shape[0] != num_q:
        raise ValueError(
            f"q_pids ({q_pids.shape[0]}) and q_camids ({q_camids.shape[0]}) must have one entry "
            f"per distmat row ({num_q})"
        )
    if g_pids.shape[0] != num_g or g_camids.shape[0] != num_g:
        raise ValueError(
            f"g_pids ({g_pids.shape[0]}) and g_camids ({g_camids.shape[0]}) must have one entry "
            f"per distmat column ({num_g})"
        )
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty query or gallery set: distmat has shape {distmat.shape}")
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    for name, arr in (("q_pids", q_pids), ("g_pids", g_pids), ("q_camids", q_camids),
                      ("g_camids", g_camids)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return (
        np.ascontiguousarray(distmat),
        q_pids.astype(np.int64, copy=False),
        g_pids.astype(np.int64, copy=False),
        q_camids.astype(np.int64, copy=False),
        g_camids.astype(np.int64, copy=False),
    )


# --------------------------------------------------------------------------------------------
# Per-query statistics. Both methods return, for every query of the chunk:
#   num_matches (int64), first_rank r_1 (int64), ap (float64), inp (float64)
# where queries without any true match have num_matches == 0 (other values meaningless).
# --------------------------------------------------------------------------------------------


def _stats_sort(dist, q_pids, g_pids, q_camids, g_camids):
    """Stable-sort based statistics for a chunk of queries, shape (C, G) -> four (C,) arrays."""
    order = np.argsort(dist, axis=1, kind="stable")
    same_pid = g_pids[order] == q_pids[:, None]
    same_cam = g_camids[order] == q_camids[:, None]
    match = same_pid & ~same_cam
    valid = ~(same_pid & same_cam)
    del order, same_pid, same_cam
    valid_rank = np.cumsum(valid, axis=1)  # 1-based rank among valid items (at valid positions)
    match_count = np.cumsum(match, axis=1)  # i for the i-th true match (at match positions)
    num_matches = match_count[:, -1].astype(np.int64)
    safe_m = np.maximum(num_matches, 1)
    precision = np.where(match, match_count / np.maximum(valid_rank, 1), 0.0)
    ap = precision.sum(axis=1) / safe_m
    rows = np.arange(dist.shape[0])
    first_rank = valid_rank[rows, np.argmax(match, axis=1)].astype(np.int64)
    last_rank = np.where(match, valid_rank, 0).max(axis=1)
    inp = num_matches / np.maximum(last_rank, 1)
    return num_matches, first_rank, ap, inp


class _GalleryIndex:
    """Gallery items grouped by person id (CSR layout: ids, start offsets, counts)."""

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        self.num_g = g_pids.shape[0]
        self.order = np.argsort(g_pids, kind="stable")  # ascending gallery index within an id
        self.pids, self.starts, self.counts = np.unique(
            g_pids[self.order], return_index=True, return_counts=True
        )
        self.g_camids = g_camids

    def lookup(self, q_pids: np.ndarray) -> np.ndarray:
        """Gallery indices (C, W) sharing each query's id, ascending, padded with ``num_g``.

        ``W`` is the largest such count among these queries (at least 1).
        """
        pos = np.minimum(np.searchsorted(self.pids, q_pids), self.pids.shape[0] - 1)
        counts = np.where(self.pids[pos] == q_pids, self.counts[pos], 0)
        width = max(int(counts.max(initial=0)), 1)
        slot = np.arange(width)[None, :]
        inside = slot < counts[:, None]
        flat = np.where(inside, self.starts[pos][:, None] + slot, 0)
        return np.where(inside, self.order[flat], self.num_g)


def _lex_less(d_a, i_a, d_b, i_b):
    """``(d_a, i_a) < (d_b, i_b)`` lexicographically (distance, then gallery index)."""
    return (d_a < d_b) | ((d_a == d_b) & (i_a < i_b))


class _Workspace:
    """Reusable (chunk, G) buffers for :func:`_stats_count` (avoids re-faulting fresh memory).

    One per thread.
    """

    def __init__(self, rows: int, num_g: int, dtype):
        self.rows, self.num_g, self.dtype = rows, num_g, dtype
        self._buffers = None

    def get(self, num_c: int):
        if self._buffers is None:
            self._buffers = (
                np.empty((self.rows, self.num_g), dtype=self.dtype),
                np.empty((self.rows, self.num_g), dtype=np.int64),
                np.empty(self.rows * self.num_g, dtype=bool),
            )
        buf, bins, mask = self._buffers
        if num_c > self.rows:
            return (np.empty((num_c, self.num_g), dtype=self.dtype),
                    np.empty((num_c, self.num_g), dtype=np.int64),
                    np.empty(num_c * self.num_g, dtype=bool))
        return buf[:num_c], bins[:num_c], mask[: num_c * self.num_g]


def _stats_count(dist, q_pids, q_camids, gindex: _GalleryIndex, num_bins: int,
                 work: _Workspace):
    """Counting-based statistics for a chunk of queries with finite distances.

    See the module docstring. Returns the four (C,) arrays of :func:`_stats_sort` plus a boolean
    (C,) array flagging queries that were not handled (too many items sharing a histogram bin
    with a true match, e.g. massive ties) and must be recomputed with :func:`_stats_sort`.
    """
    num_c, num_g = dist.shape
    dtype = dist.dtype
    rows = np.arange(num_c)

    # Same-id gallery items of every query: true matches (other camera) and junk (same camera).
    cand = gindex.lookup(q_pids)  # (C, W), ascending gallery index, padded with num_g
    width = cand.shape[1]
    in_range = cand < num_g
    cand_c = np.where(in_range, cand, 0)
    same_cam = gindex.g_camids[cand_c] == q_camids[:, None]
    is_match = in_range & ~same_cam
    is_junk = in_range & same_cam
    cand_d = np.take_along_axis(dist, cand_c, axis=1)
    num_matches = is_match.sum(axis=1).astype(np.int64)
    has_match = num_matches > 0
    valid_slot = np.arange(width)[None, :] < num_matches[:, None]  # (C, W) sorted-match slots

    # Same-id items in (distance, gallery index) order: stable sort of index-ordered candidates
    # (distances are finite here; padding goes last). The number of junk items before each true
    # match is then a cumulative count; finally the true matches are moved to the front.
    order = np.argsort(np.where(in_range, cand_d, np.inf), axis=1, kind="stable")
    s_d = np.take_along_axis(cand_d, order, axis=1)
    s_col = np.take_along_axis(cand_c, order, axis=1)
    s_match = np.take_along_axis(is_match, order, axis=1)
    s_junk = np.take_along_axis(is_junk, order, axis=1)
    junk_before = np.cumsum(s_junk, axis=1) - s_junk
    front = np.argsort(~s_match, axis=1, kind="stable")
    md = np.take_along_axis(s_d, front, axis=1)  # (C, W) true-match distances, ascending
    mcol = np.take_along_axis(s_col, front, axis=1)  # their gallery indices
    junk_less = np.take_along_axis(junk_before, front, axis=1)  # junk items before each

    # Uniform bins between the closest and the farthest true match of each row; anything below
    # goes to an underflow bin, anything above to an overflow bin. The bin of a distance is a
    # monotone (non-decreasing) function of it, computed identically for every item of a row,
    # so an item in a lower (higher) bin than a true match is strictly closer (farther).
    last = np.maximum(num_matches - 1, 0)
    lo = np.where(has_match, md[:, 0], 0).astype(dtype)
    span = np.where(has_match, md[rows, last], 0).astype(dtype) - lo
    span = np.where(span > 0, span, np.maximum(np.abs(lo), 1)).astype(dtype)
    scale = ((num_bins - 1) / span).astype(dtype)
    scale = np.where(has_match & np.isfinite(scale), scale, 0).astype(dtype)
    stride = num_bins + 2
    buf, bins, mask = work.get(num_c)
    np.subtract(dist, lo[:, None], out=buf)
    np.multiply(buf, scale[:, None], out=buf)
    np.clip(buf, -1, num_bins, out=buf)  # [-1, B]: -1 underflow, B overflow
    # Flat bin id row * stride + (bin + 1); the integer offset (< 2**24) is exact in float32,
    # the rounding of the sum is monotone and stays within the row's range.
    np.add(buf, (rows * stride + 1).astype(dtype)[:, None], out=buf)
    np.copyto(bins, buf, casting="unsafe")  # truncation (values are >= 0): monotone
    flat_bins = bins.reshape(-1)

    # Items in strictly lower bins than each true match (all precede it).
    hist = np.bincount(flat_bins, minlength=num_c * stride)
    below = np.cumsum(hist.reshape(num_c, stride), axis=1).reshape(-1) - hist
    mbin = np.where(valid_slot, bins[rows[:, None], mcol], -1)  # (C, W) flat bin of each match
    before = np.where(valid_slot, below[np.maximum(mbin, 0)], 0)

    # Items sharing a bin with a true match: compare (distance, index) exactly.
    flagged = np.zeros(num_c * stride, dtype=bool)
    flagged[mbin[valid_slot]] = True
    np.take(flagged, flat_bins, out=mask)
    pos = np.flatnonzero(mask)
    pos_bin = flat_bins[pos]
    pos_row = pos // num_g
    needs_sort = np.zeros(num_c, dtype=bool)
    per_row = np.bincount(pos_row, minlength=num_c)
    heavy = per_row > max(num_g // 8, 4 * width + 64)
    if heavy.any():
        needs_sort = heavy
        keep = ~heavy[pos_row]
        pos, pos_row, pos_bin = pos[keep], pos_row[keep], pos_bin[keep]
    pos_col = pos - pos_row * num_g
    pos_d = dist.reshape(-1)[pos]
    same_bin_less = np.zeros(num_c * width, dtype=np.int64)
    block = max(1, (1 << 20) // max(width, 1))
    for start in range(0, pos.shape[0], block):
        r = pos_row[start:start + block]
        hit = (mbin[r] == pos_bin[start:start + block, None]) & _lex_less(
            pos_d[start:start + block, None], pos_col[start:start + block, None], md[r], mcol[r]
        )
        k, j = np.nonzero(hit)
        same_bin_less += np.bincount(r[k] * width + j, minlength=num_c * width)
    before += same_bin_less.reshape(num_c, width)

    # Rank among the valid items of the i-th true match (junk items are not ranked).
    ranks = 1 + before - junk_less  # (C, W)

    i1 = np.arange(1, width + 1, dtype=np.int64)[None, :]
    safe_m = np.maximum(num_matches, 1)
    ap = np.where(valid_slot, i1 / np.maximum(ranks, 1), 0.0).sum(axis=1) / safe_m
    first_rank = ranks[:, 0]
    inp = num_matches / np.maximum(ranks[rows, last], 1)
    return num_matches, first_rank, ap, inp, needs_sort


def _chunk_stats(dist, q_pids, q_camids, g_pids, g_camids, method, gindex, num_bins, work):
    """Per-query statistics of one chunk of rows, dispatching to the counting or sort method."""
    num_c = dist.shape[0]
    # Cheap screen for non-finite rows (a finite row can only fail it by overflowing the sum).
    finite = np.isfinite(dist.sum(axis=1))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        if np.isnan(dist[bad]).any():
            raise ValueError("distmat contains NaN")
        finite[bad] = np.isfinite(dist[bad]).all(axis=1)
    if method == "sort":
        return _stats_sort(dist, q_pids, g_pids, q_camids, g_camids)

    if finite.all():
        m, r1, ap, inp, needs_sort = _stats_count(dist, q_pids, q_camids, gindex, num_bins, work)
    else:
        # Rows with infinite distances go to the sort-based method.
        m, r1 = np.zeros(num_c, dtype=np.int64), np.zeros(num_c, dtype=np.int64)
        ap, inp = np.zeros(num_c), np.zeros(num_c)
        needs_sort = ~finite
        fin = np.flatnonzero(finite)
        if fin.size:
            m[fin], r1[fin], ap[fin], inp[fin], needs_sort[fin] = _stats_count(
                dist[fin], q_pids[fin], q_camids[fin], gindex, num_bins, work
            )
    if needs_sort.any():
        rows = np.flatnonzero(needs_sort)
        m[rows], r1[rows], ap[rows], inp[rows] = _stats_sort(
            dist[rows], q_pids[rows], g_pids, q_camids[rows], g_camids
        )
    return m, r1, ap, inp


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    *,
    ap_mode: str = "standard",
    method: str = "count",
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> dict:
    """CMC, mAP and mINP of a query-vs-gallery distance matrix (Market-1501 protocol).

    See the module docstring for the exact definitions. Inputs may be numpy arrays or torch
    tensors (any device); they are converted to numpy. Ties in distance are broken by gallery
    index (the order of a stable sort), whatever the method.

    Args:
        distmat: (Q, G) float distances, smaller = more similar. Must not contain NaN;
            infinities are allowed. Integer input is converted to float64.
        q_pids: (Q,) int person ids of the queries.
        g_pids: (G,) int person ids of the gallery.
        q_camids: (Q,) int camera ids of the queries.
        g_camids: (G,) int camera ids of the gallery.
        max_rank: length of the returned CMC curve. May exceed the gallery size; the curve then
            simply stays at its last value.
        ap_mode: average-precision definition; only ``"standard"`` (non-interpolated,
            ``(1/m) sum_i i / r_i``) is implemented for now.
        method: ``"count"`` (default, fast) or ``"sort"`` (stable argsort of every row). Both
            give identical results.
        chunk_size: queries processed at once; default keeps about 2M (query, gallery)
            entries per chunk.
        num_workers: threads processing chunks concurrently (numpy releases the GIL in the
            heavy loops); default ``min(4, available cores)``. Results do not depend on it.

    Returns:
        dict with ``cmc`` ((max_rank,) float64 numpy array: fraction of valid queries whose
        first true match is within rank k + 1), ``mAP`` and ``mINP`` (floats in [0, 1]),
        ``num_valid_queries`` and ``num_skipped_queries`` (ints).

    Raises:
        ValueError: on inconsistent shapes, NaN distances, an unknown ``ap_mode`` or
            ``method``, or when no query has a true match in the gallery.
    """
    if ap_mode not in AP_MODES:
        raise ValueError(f"unknown ap_mode {ap_mode!r}; supported: {', '.join(AP_MODES)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; supported: {', '.join(METHODS)}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids
    )
    num_q, num_g = distmat.shape
    if chunk_size is None:
        chunk_size = _CHUNK_ELEMENTS // num_g
    chunk_size = max(1, int(chunk_size))
    gindex = _GalleryIndex(g_pids, g_camids) if method == "count" else None
    num_bins = int(min(max(num_g // 4, 64), 1 << 14))
    if method == "count":
        # Flat bin ids (row * (num_bins + 2) + bin) are formed in floating point: keep them
        # below 2**24 so that they are exact integers even in float32.
        chunk_size = min(chunk_size, (1 << 24) // (num_bins + 2) - 1)
    starts = range(0, num_q, chunk_size)
    num_workers = _default_workers() if num_workers is None else max(1, int(num_workers))
    num_workers = min(num_workers, len(starts))
    local = threading.local()

    def run(start: int):
        if not hasattr(local, "work"):
            local.work = _Workspace(min(chunk_size, num_q), num_g, distmat.dtype)
        sl = slice(start, min(start + chunk_size, num_q))
        with np.errstate(over="ignore", invalid="ignore"):
            return _chunk_stats(distmat[sl], q_pids[sl], q_camids[sl], g_pids, g_camids,
                                method, gindex, num_bins, local.work)

    if num_workers > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(run, starts))
    else:
        results = [run(start) for start in starts]
    num_matches, first_rank, ap, inp = (np.concatenate(parts) for parts in zip(*results))

    valid = num_matches > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_q} queries has a true match in the gallery (a gallery item with "
            "the query's person id from another camera): cannot compute CMC/mAP/mINP"
        )
    # cmc[k] = fraction of valid queries whose first true match has rank r_1 <= k + 1.
    first = first_rank[valid]
    counts = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)
    cmc = np.cumsum(counts[:max_rank]).astype(np.float64) / num_valid
    return {
        "cmc": cmc,
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "num_valid_queries": num_valid,
        "num_skipped_queries": int(num_q - num_valid),
    }
