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

Options
-------
``ap_mode="trapezoid"``
    The average precision of the original Market-1501 MATLAB evaluation code (``compute_AP.m``),
    which integrates precision over recall with the trapezoid rule:
    ``AP = (1/m) * sum_i (i / r_i + p_{i-1}) / 2`` where ``p_{i-1} = (i - 1) / (r_i - 1)`` is
    the precision at the valid item just before the i-th match (1 when ``r_i = 1``). As that
    precision is never above ``i / r_i``, it is never higher than the standard AP (usually a
    little lower); papers built on the MATLAB code (the original Market-1501 and DukeMTMC-reID
    baselines) report it.
``protocol="cuhk03"``
    The classic CUHK03 single-gallery-shot CMC (torchreid's ``eval_cuhk03``): for every query
    and each of ``num_repeats`` (10) repeats, one valid gallery image of every identity is
    drawn at random, the CMC of the query is computed on that reduced gallery, and the curves
    are averaged over the repeats. mAP and mINP stay those of the full gallery, as in torchreid.
    The draws are reproducible: query ``q`` uses ``numpy.random.default_rng([seed, q])``, draws
    ``num_repeats x G`` uniform keys, and each identity's valid item with the smallest key is
    kept. It is a statistical metric: other implementations draw differently and agree only in
    expectation. Use the default ``"market"`` protocol for the CUHK03-NP (767/700) split, as
    papers do.

:func:`evaluate_features` takes embeddings instead of a distance matrix and streams blocks of
query rows, so the full query x gallery matrix never exists.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .distance import GalleryNorms

__all__ = ["evaluate_rank", "evaluate_features", "AP_MODES", "METHODS", "PROTOCOLS"]

#: Supported average-precision definitions (see the module docstring).
AP_MODES = ("standard", "trapezoid")
#: Supported CMC protocols: all valid gallery items, or CUHK03's single-gallery-shot sampling.
PROTOCOLS = ("market", "cuhk03")
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


# --------------------------------------------------------------------------------------------
# Per-query statistics. Both methods return, for every query of the chunk:
#   num_matches (int64), first_rank r_1 (int64), ap (float64), inp (float64)
# where queries without any true match have num_matches == 0 (other values meaningless).
# --------------------------------------------------------------------------------------------


def _average_precision(i, ranks, mask, num_matches, ap_mode):
    """Per-query AP from the true matches' numbers ``i`` (1-based) and valid ranks ``r_i``.

    ``i``, ``ranks`` and ``mask`` broadcast to (C, K); entries where ``mask`` is False are
    ignored. ``"standard"``: mean of ``i / r_i``; ``"trapezoid"``: mean of
    ``(i / r_i + (i - 1) / (r_i - 1)) / 2`` with the second term 1 at ``r_i = 1``.
    """
    precision = i / np.maximum(ranks, 1)
    if ap_mode == "trapezoid":
        previous = np.where(ranks > 1, (i - 1) / np.maximum(ranks - 1, 1), 1.0)
        precision = (precision + previous) / 2
    return np.where(mask, precision, 0.0).sum(axis=1) / np.maximum(num_matches, 1)


def _stats_sort(dist, q_pids, g_pids, q_camids, g_camids, ap_mode):
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
    ap = _average_precision(match_count, valid_rank, match, num_matches, ap_mode)
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
        self.group = np.repeat(np.arange(self.pids.shape[0]), self.counts)  # id of sorted item

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

    One per thread; allocated on first use, grown if a larger chunk ever comes.
    """

    def __init__(self, rows: int, num_g: int, dtype):
        self.rows, self.num_g, self.dtype = rows, num_g, dtype
        self._buffers = None

    def get(self, num_c: int):
        """(num_c, G) distance-dtype and int64 buffers and a flat (num_c * G,) bool one."""
        if self._buffers is None or num_c > self.rows:
            self.rows = max(self.rows, num_c)
            self._buffers = (
                np.empty((self.rows, self.num_g), dtype=self.dtype),
                np.empty((self.rows, self.num_g), dtype=np.int64),
                np.empty(self.rows * self.num_g, dtype=bool),
            )
        buf, bins, mask = self._buffers
        return buf[:num_c], bins[:num_c], mask[: num_c * self.num_g]


def _stats_count(dist, q_pids, q_camids, gindex: _GalleryIndex, num_bins: int,
                 work: _Workspace, ap_mode: str):
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
    ap = _average_precision(i1, ranks, valid_slot, num_matches, ap_mode)
    first_rank = ranks[:, 0]
    inp = num_matches / np.maximum(ranks[rows, last], 1)
    return num_matches, first_rank, ap, inp, needs_sort


def _single_shot_cmc(dist, q_pids, q_camids, q_offset, gindex: _GalleryIndex, max_rank,
                     num_repeats, seed):
    """CUHK03 single-gallery-shot CMC of a chunk of queries, averaged over the repeats.

    Args:
        dist: (C, G) distances of the chunk's queries.
        q_pids, q_camids: (C,) ids and cameras of those queries.
        q_offset: index of the chunk's first query in the whole query set (seeds its draws).

    Returns:
        (C, max_rank) float64: for each query the fraction of repeats whose sampled true match
        is within rank k + 1 of the sampled gallery; zero rows for queries without a match.
    """
    num_c = dist.shape[0]
    order, group = gindex.order, gindex.group
    g_pids_s = gindex.pids[group]
    g_cams_s = gindex.g_camids[order]
    ks = np.arange(1, max_rank + 1)
    out = np.zeros((num_c, max_rank))
    for c in range(num_c):
        same = g_pids_s == q_pids[c]
        junk = same & (g_cams_s == q_camids[c])
        match = same & ~junk
        if not match.any():
            continue
        # Keys are drawn in gallery order, then laid out by identity (``order``): the valid
        # item of each identity with the smallest key is that repeat's single shot.
        keys = np.random.default_rng([seed, q_offset + c]).random((num_repeats, dist.shape[1]))
        keys = keys[:, order]
        keys[:, junk] = np.inf
        group_min = np.minimum.reduceat(keys, gindex.starts, axis=1)
        chosen = (keys == group_min[:, group]) & ~junk
        d = dist[c][order]
        pos = np.argmax(chosen & match, axis=1)  # the chosen true match of each repeat
        md, mi = d[pos][:, None], order[pos][:, None]
        before = chosen & _lex_less(d[None, :], order[None, :], md, mi)
        rank = before.sum(axis=1) + 1
        out[c] = (rank[:, None] <= ks[None, :]).mean(axis=0)
    return out


class _Options:
    """What every chunk needs to know: the gallery and the metric's settings."""

    def __init__(self, g_pids, g_camids, method, ap_mode, protocol, max_rank, num_repeats, seed):
        self.g_pids, self.g_camids = g_pids, g_camids
        self.method, self.ap_mode, self.protocol = method, ap_mode, protocol
        self.max_rank, self.num_repeats, self.seed = max_rank, num_repeats, seed
        self.gindex = _GalleryIndex(g_pids, g_camids)
        self.num_bins = int(min(max(g_pids.shape[0] // 4, 64), 1 << 14))


def _chunk_stats(dist, q_pids, q_camids, q_offset, opts: _Options, work):
    """Per-query statistics of one chunk of rows (C, G).

    Returns ``num_matches``, ``first_rank``, ``ap``, ``inp`` (each (C,)) and, for the CUHK03
    protocol, the (C, max_rank) single-shot CMC (else None).
    """
    num_c = dist.shape[0]
    g_pids, g_camids = opts.g_pids, opts.g_camids
    # Cheap screen for non-finite rows (a finite row can only fail it by overflowing the sum).
    finite = np.isfinite(dist.sum(axis=1))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        if np.isnan(dist[bad]).any():
            raise ValueError("distmat contains NaN")
        finite[bad] = np.isfinite(dist[bad]).all(axis=1)
    single_shot = None
    if opts.protocol == "cuhk03":
        single_shot = _single_shot_cmc(dist, q_pids, q_camids, q_offset, opts.gindex,
                                       opts.max_rank, opts.num_repeats, opts.seed)
    if opts.method == "sort":
        return (*_stats_sort(dist, q_pids, g_pids, q_camids, g_camids, opts.ap_mode), single_shot)

    def count(rows):
        return _stats_count(dist[rows], q_pids[rows], q_camids[rows], opts.gindex,
                            opts.num_bins, work, opts.ap_mode)

    if finite.all():
        m, r1, ap, inp, needs_sort = count(slice(None))
    else:
        # Rows with infinite distances go to the sort-based method.
        m, r1 = np.zeros(num_c, dtype=np.int64), np.zeros(num_c, dtype=np.int64)
        ap, inp = np.zeros(num_c), np.zeros(num_c)
        needs_sort = ~finite
        fin = np.flatnonzero(finite)
        if fin.size:
            m[fin], r1[fin], ap[fin], inp[fin], needs_sort[fin] = count(fin)
    if needs_sort.any():
        rows = np.flatnonzero(needs_sort)
        m[rows], r1[rows], ap[rows], inp[rows] = _stats_sort(
            dist[rows], q_pids[rows], g_pids, q_camids[rows], g_camids, opts.ap_mode
        )
    return m, r1, ap, inp, single_shot


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _check_options(max_rank, ap_mode, method, protocol, num_repeats) -> int:
    if ap_mode not in AP_MODES:
        raise ValueError(f"unknown ap_mode {ap_mode!r}; supported: {', '.join(AP_MODES)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; supported: {', '.join(METHODS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; supported: {', '.join(PROTOCOLS)}")
    if int(num_repeats) < 1:
        raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return int(max_rank)


def _check_labels(q_pids, g_pids, q_camids, g_camids, num_q, num_g, what):
    """ids and cameras as flat int64 arrays, one per query row / gallery column of ``what``."""
    q_pids, g_pids, q_camids, g_camids = (
        _to_numpy(a).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)
    )
    if q_pids.shape[0] != num_q or q_camids.shape[0] != num_q:
        raise ValueError(
            f"q_pids ({q_pids.shape[0]}) and q_camids ({q_camids.shape[0]}) must have one entry "
            f"per {what} query ({num_q})"
        )
    if g_pids.shape[0] != num_g or g_camids.shape[0] != num_g:
        raise ValueError(
            f"g_pids ({g_pids.shape[0]}) and g_camids ({g_camids.shape[0]}) must have one entry "
            f"per {what} gallery item ({num_g})"
        )
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty query or gallery set: {num_q} queries, {num_g} gallery items")
    for name, arr in (("q_pids", q_pids), ("g_pids", g_pids), ("q_camids", q_camids),
                      ("g_camids", g_camids)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return tuple(a.astype(np.int64, copy=False) for a in (q_pids, g_pids, q_camids, g_camids))


def _evaluate_blocks(blocks, q_pids, q_camids, opts: _Options, chunk_size, num_workers,
                     per_query: bool) -> dict:
    """Run the per-query kernels over ``blocks`` and average the statistics.

    Args:
        blocks: iterable of ``(start, block)``, consecutive (B, G) numpy blocks of query rows
            covering all queries in order; produced lazily, at most two are alive at a time
            (the next block is computed while the threads work on the current one).
        chunk_size: rows handed to a kernel call (``None``: about 2M entries).
    """
    num_q, num_g = q_pids.shape[0], opts.g_pids.shape[0]
    if chunk_size is None:
        chunk_size = _CHUNK_ELEMENTS // num_g
    chunk_size = max(1, int(chunk_size))
    if opts.method == "count":
        # Flat bin ids (row * (num_bins + 2) + bin) are formed in floating point: keep them
        # below 2**24 so that they are exact integers even in float32.
        chunk_size = min(chunk_size, (1 << 24) // (opts.num_bins + 2) - 1)
    num_workers = _default_workers() if num_workers is None else max(1, int(num_workers))
    num_workers = min(num_workers, -(-num_q // chunk_size))
    local = threading.local()

    def run(block, start, offset):
        stop = min(offset + chunk_size, block.shape[0])
        if getattr(local, "work", None) is None or local.work.dtype != block.dtype:
            local.work = _Workspace(min(chunk_size, num_q), num_g, block.dtype)
        q = slice(start + offset, start + stop)
        with np.errstate(over="ignore", invalid="ignore"):
            return _chunk_stats(block[offset:stop], q_pids[q], q_camids[q], start + offset, opts,
                                local.work)

    results, previous = [], []
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        for start, block in blocks:
            current = [pool.submit(run, block, start, off)
                       for off in range(0, block.shape[0], chunk_size)]
            results += [f.result() for f in previous]  # bounds the blocks alive to two
            previous = current
        results += [f.result() for f in previous]
    num_matches, first_rank, ap, inp = (np.concatenate(part) for part in list(zip(*results))[:4])
    if num_matches.shape[0] != num_q:
        raise RuntimeError(f"blocks covered {num_matches.shape[0]} of {num_q} queries")

    valid = num_matches > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_q} queries has a true match in the gallery (a gallery item with "
            "the query's person id from another camera): cannot compute CMC/mAP/mINP"
        )
    max_rank = opts.max_rank
    if opts.protocol == "cuhk03":
        cmc = np.concatenate([r[4] for r in results])[valid].mean(axis=0)
    else:
        # cmc[k] = fraction of valid queries whose first true match has rank r_1 <= k + 1.
        first = first_rank[valid]
        counts = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)
        cmc = np.cumsum(counts[:max_rank]).astype(np.float64) / num_valid
    out = {
        "cmc": cmc,
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "num_valid_queries": num_valid,
        "num_skipped_queries": int(num_q - num_valid),
    }
    if per_query:
        out["per_query"] = {
            "valid": valid,
            "num_matches": num_matches,
            "first_rank": np.where(valid, first_rank, 0),
            "ap": np.where(valid, ap, np.nan),
            "inp": np.where(valid, inp, np.nan),
        }
    return out


_COMMON_ARGS = """
        max_rank: length of the returned CMC curve. May exceed the gallery size; the curve then
            simply stays at its last value.
        ap_mode: ``"standard"`` (non-interpolated, ``(1/m) sum_i i / r_i``, what torchreid,
            fast-reid and the strong baseline report) or ``"trapezoid"`` (the Market-1501
            MATLAB code's); see the module docstring.
        protocol: ``"market"`` (every valid gallery item) or ``"cuhk03"`` (the classic
            single-gallery-shot CMC over ``num_repeats`` random draws seeded by ``seed``).
        method: ``"count"`` (default, fast) or ``"sort"`` (stable argsort of every row). Both
            give identical results.
        chunk_size: queries handed to one kernel call; default keeps about 2M (query, gallery)
            entries per call.
        num_workers: threads processing chunks concurrently (numpy releases the GIL in the
            heavy loops); default ``min(4, available cores)``. Results do not depend on it.
        per_query: also return ``per_query``, a dict of (Q,) arrays ``valid`` (bool: the query
            has a true match), ``num_matches``, ``first_rank`` (0 when not valid), ``ap`` and
            ``inp`` (NaN when not valid), for per-query analysis.

    Returns:
        dict with ``cmc`` ((max_rank,) float64 numpy array: fraction of valid queries whose
        first true match is within rank k + 1), ``mAP`` and ``mINP`` (floats in [0, 1]),
        ``num_valid_queries`` and ``num_skipped_queries`` (ints), and ``per_query`` if asked.
"""


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    *,
    ap_mode: str = "standard",
    protocol: str = "market",
    num_repeats: int = 10,
    seed: int = 0,
    method: str = "count",
    chunk_size: int | None = None,
    num_workers: int | None = None,
    per_query: bool = False,
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
        g_camids: (G,) int camera ids of the gallery.{args}
    Raises:
        ValueError: on inconsistent shapes, NaN distances, an unknown option, or when no query
            has a true match in the gallery.
    """
    max_rank = _check_options(max_rank, ap_mode, method, protocol, num_repeats)
    distmat = _to_numpy(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids, g_pids, q_camids, g_camids = _check_labels(q_pids, g_pids, q_camids, g_camids,
                                                       num_q, num_g, "distmat")
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    distmat = np.ascontiguousarray(distmat)
    opts = _Options(g_pids, g_camids, method, ap_mode, protocol, max_rank, num_repeats, seed)
    return _evaluate_blocks([(0, distmat)], q_pids, q_camids, opts, chunk_size, num_workers,
                            per_query)


# Query rows per distance block of evaluate_features: about 32M entries (128 MB in float32),
# large enough for an efficient matrix product, small enough for an MSMT17-sized gallery.
_BLOCK_ELEMENTS = 1 << 25


def evaluate_features(
    query_features,
    gallery_features,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    *,
    ap_mode: str = "standard",
    protocol: str = "market",
    num_repeats: int = 10,
    seed: int = 0,
    method: str = "count",
    block_size: int | None = None,
    chunk_size: int | None = None,
    num_workers: int | None = None,
    per_query: bool = False,
) -> dict:
    """:func:`evaluate_rank` of the Euclidean distances between embeddings, streamed.

    The distances are computed in float32 by blocks of query rows (``||q||^2 + ||g||^2 -
    2 q.g``, clamped at 0, square root) with torch, on the features' device, and each block is
    ranked while the next is computed; the (Q, G) matrix never exists, so memory is the
    features plus two blocks (about 128 MB each) plus the kernels' buffers. The result equals
    ``evaluate_rank(euclidean_distance(qf, gf), ...)``.

    Args:
        query_features: (Q, D) float embeddings (numpy or torch; L2-normalised or not).
        gallery_features: (G, D) float embeddings.
        q_pids, g_pids, q_camids, g_camids: as for :func:`evaluate_rank`.
        block_size: query rows per distance block (default: about 32M entries per block).{args}
    Raises:
        ValueError: on inconsistent shapes, NaN or infinite features, an unknown option, or
            when no query has a true match in the gallery.
    """
    max_rank = _check_options(max_rank, ap_mode, method, protocol, num_repeats)
    qf = torch.as_tensor(query_features)
    gf = torch.as_tensor(gallery_features, device=qf.device)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"features must be (Q, D) and (G, D) with the same D, got {tuple(qf.shape)} and "
            f"{tuple(gf.shape)}"
        )
    num_q, num_g = qf.shape[0], gf.shape[0]
    q_pids, g_pids, q_camids, g_camids = _check_labels(q_pids, g_pids, q_camids, g_camids,
                                                       num_q, num_g, "features")
    qf, gf = qf.float(), gf.float()
    for name, f in (("query_features", qf), ("gallery_features", gf)):
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    opts = _Options(g_pids, g_camids, method, ap_mode, protocol, max_rank, num_repeats, seed)
    rows = max(1, int(block_size) if block_size else _BLOCK_ELEMENTS // num_g)
    gallery = GalleryNorms(gf)

    def blocks():
        for start in range(0, num_q, rows):
            yield start, gallery.distance(qf[start:start + rows]).cpu().numpy()

    return _evaluate_blocks(blocks(), q_pids, q_camids, opts, chunk_size, num_workers, per_query)


evaluate_rank.__doc__ = evaluate_rank.__doc__.format(args=_COMMON_ARGS)
evaluate_features.__doc__ = evaluate_features.__doc__.format(args=_COMMON_ARGS)
