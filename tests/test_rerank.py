"""k-reciprocal re-ranking: the sparse and streamed versions against a dense, loop-based port."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import magnifier.evaluation.rerank as rerank
from magnifier.evaluation import euclidean_distance, evaluate_rank
from magnifier.evaluation.rerank import re_ranking, re_ranking_features


def _k_reciprocal(rank, i, k):
    """The items among the k + 1 first of row i of ``rank`` that have i among their k + 1."""
    forward = rank[i, :k + 1]
    backward = rank[forward, :k + 1]
    return forward[(backward == i).any(axis=1)]


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The authors' algorithm, step by step: dense float32 matrices, one item at a time.

    Also the baseline of ``benchmarks/rerank_speed.py`` (vectorised within an item as the
    published code is, and with its memory: several dense (Q+G)^2 matrices).
    """
    num_q = q_g_dist.shape[0]
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    dist = np.power(dist, 2).astype(np.float32)
    orig = np.transpose(dist / np.max(dist, axis=0))  # row i: column i over its maximum
    del dist
    n = orig.shape[0]
    rank = np.argsort(orig, axis=1).astype(np.int32)
    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        recip = _k_reciprocal(rank, i, k1)
        expansion = [recip]
        for candidate in recip:
            half_set = _k_reciprocal(rank, candidate, half)
            if len(np.intersect1d(half_set, recip)) > 2.0 / 3 * len(half_set):
                expansion.append(half_set)
        members = np.unique(np.concatenate(expansion))
        weight = np.exp(-orig[i, members])
        v[i, members] = weight / np.sum(weight)
    if k2 != 1:
        expanded = np.zeros_like(v)
        for i in range(n):
            expanded[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = expanded
        del expanded
    del rank
    holders = [np.flatnonzero(v[:, k]) for k in range(n)]  # who has item k in its set
    final = np.empty((num_q, n - num_q), dtype=np.float32)
    for i in range(num_q):
        shared = np.zeros(n, dtype=np.float32)
        for k in np.flatnonzero(v[i]):
            shared[holders[k]] += np.minimum(v[i, k], v[holders[k], k])
        jaccard = 1 - shared / (2.0 - shared)
        row = jaccard * (1 - lambda_value) + orig[i] * lambda_value
        final[i] = row[num_q:]
    return final


def _features(q, g, dim=12, ids=15, noise=0.7, seed=0):
    """Features clustered by identity, float32, and the identities."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    q_ids, g_ids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qf = centres[q_ids] + noise * rng.standard_normal((q, dim))
    gf = centres[g_ids] + noise * rng.standard_normal((g, dim))
    return qf.astype(np.float32), gf.astype(np.float32), q_ids, g_ids


def _matrices(qf, gf):
    """(q_g, q_q, g_g) Euclidean distances, float32 numpy."""
    qf, gf = torch.as_tensor(qf), torch.as_tensor(gf)
    return tuple(euclidean_distance(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))


def _assert_close(got, expected):
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (7, 1, 0.3), (10, 11, 0.0), (4, 2, 0.6),
                                       (13, 3, 1.0)])
def test_matrices_and_features_match_the_reference(seed, k1, k2, lam):
    qf, gf, _, _ = _features(25, 90, seed=seed)
    mats = _matrices(qf, gf)
    expected = reference_re_ranking(*mats, k1=k1, k2=k2, lambda_value=lam)
    _assert_close(re_ranking(*mats, k1=k1, k2=k2, lambda_value=lam), expected)
    _assert_close(re_ranking_features(qf, gf, k1=k1, k2=k2, lambda_value=lam), expected)


def test_reranking_changes_the_order():
    qf, gf, _, _ = _features(25, 90)
    qg = _matrices(qf, gf)[0]
    ranks = np.argsort(re_ranking_features(qf, gf), axis=1)
    assert (ranks != np.argsort(qg, axis=1)).any(axis=1).mean() > 0.5


def test_small_blocks_give_the_same_result(monkeypatch):
    qf, gf, _, _ = _features(30, 70, seed=3)
    mats = _matrices(qf, gf)
    expected = re_ranking(*mats)
    for name, value in (("_BLOCK_ELEMENTS", 1000), ("_MARK_ELEMENTS", 500),
                        ("_JACCARD_ELEMENTS", 300), ("_GATHER_PAIRS", 64), ("_TILE_ROWS", 4)):
        monkeypatch.setattr(rerank, name, value)
    _assert_close(re_ranking(*mats), expected)
    for chunk_size in (1, 7, 29, 100):
        _assert_close(re_ranking_features(qf, gf, chunk_size=chunk_size), expected)


def test_expansion_is_exercised():
    # Tight clusters: many k-reciprocal sets R(i) grow by their candidates' half sets.
    qf, gf, _, _ = _features(20, 120, dim=8, ids=10, noise=0.3, seed=7)
    qg, qq, gg = mats = _matrices(qf, gf)
    top = np.argsort(np.block([[qq, qg], [qg.T, gg]]), axis=1)[:, :11]
    indptr, _ = rerank._expanded_sets(top, 11, 6)
    recip_size = rerank._reciprocal(top, np.arange(140), 11).sum(axis=1)
    assert (np.diff(indptr) > recip_size).sum() > 20
    expected = reference_re_ranking(*mats, k1=10, k2=4)
    _assert_close(re_ranking(*mats, k1=10, k2=4), expected)
    _assert_close(re_ranking_features(qf, gf, k1=10, k2=4), expected)


def test_non_symmetric_matrices_use_columns():
    rng = np.random.default_rng(5)
    qg, qq, gg = rng.random((15, 40)), rng.random((15, 15)), rng.random((40, 40))
    np.fill_diagonal(qq, 0)
    np.fill_diagonal(gg, 0)
    for k1, k2, lam in ((6, 3, 0.3), (20, 1, 0.7)):
        expected = reference_re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
        _assert_close(re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam), expected)
        assert np.abs(re_ranking(qg, qq.T, gg.T, k1=k1, k2=k2, lambda_value=lam)
                      - expected).max() > 1e-3
    # lambda = 1: the original distance, q_g^2 over the maximum of column i of [q_q; q_g^T].
    col_max = np.maximum((qq ** 2).max(axis=0), (qg ** 2).max(axis=1))
    _assert_close(re_ranking(qg, qq, gg, lambda_value=1.0),
                  ((qg ** 2).astype(np.float32) / col_max[:, None].astype(np.float32)))


def test_torch_and_float64_inputs():
    qf, gf, _, _ = _features(20, 50, seed=4)
    mats = _matrices(qf, gf)
    expected = reference_re_ranking(*mats, k1=8, k2=3)
    _assert_close(re_ranking(*(torch.from_numpy(m) for m in mats), k1=8, k2=3), expected)
    _assert_close(re_ranking(*(m.astype(np.float64) for m in mats), k1=8, k2=3), expected)
    _assert_close(re_ranking_features(torch.from_numpy(qf), torch.from_numpy(gf).double(),
                                      k1=8, k2=3), expected)


def test_fewer_items_than_neighbours():
    qf, gf, _, _ = _features(3, 8, dim=4, ids=3, seed=9)
    mats = _matrices(qf, gf)
    for k1, k2 in ((20, 21), (20, 6), (6, 7)):
        expected = reference_re_ranking(*mats, k1=k1, k2=k2)
        _assert_close(re_ranking(*mats, k1=k1, k2=k2), expected)
        _assert_close(re_ranking_features(qf, gf, k1=k1, k2=k2), expected)


def test_improves_map_on_clustered_data():
    # 40 identities seen by two cameras, one query each, six gallery images; noisy features.
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((40, 16))
    q_ids, g_ids = np.arange(40), np.repeat(np.arange(40), 6)
    qf = centres[q_ids] + 1.1 * rng.standard_normal((40, 16))
    gf = centres[g_ids] + 1.1 * rng.standard_normal((240, 16))
    cams = np.zeros(40, dtype=int), np.ones(240, dtype=int)
    plain = evaluate_rank(_matrices(qf, gf)[0], q_ids, g_ids, *cams)["mAP"]
    reranked = evaluate_rank(re_ranking_features(qf, gf, k1=10, k2=4), q_ids, g_ids, *cams)["mAP"]
    assert reranked > plain + 0.05


@pytest.mark.parametrize("change,message", [
    (lambda m: (m[0], m[1], m[2][:5]), "do not fit"),
    (lambda m: (m[0], m[1][:, :3], m[2]), "do not fit"),
    (lambda m: (m[0][0], m[1], m[2]), r"q_g_dist must be a 2-D matrix, got shape \(12,\)"),
    (lambda m: (m[0], m[1][0], m[2]), r"q_q_dist must be a 2-D matrix"),
    (lambda m: (m[0], m[1], m[2][0]), r"g_g_dist must be a 2-D matrix"),
    (lambda m: (m[0][:0], m[1][:0, :0], m[2]), "empty"),
    (lambda m: (m[0][:, :0], m[1], m[2][:0, :0]), "empty"),
    (lambda m: (np.where(np.eye(*m[0].shape, dtype=bool), np.nan, m[0]), m[1], m[2]), "NaN"),
    (lambda m: (m[0], m[1], np.where(np.eye(12, dtype=bool), np.inf, m[2])), "NaN or infinite"),
    (lambda m: (m[0] * 0, m[1] * 0, m[2] * 0), "the distances: item 0 has all its distances zero"),
])
def test_bad_matrices(change, message):
    qf, gf, _, _ = _features(5, 12, dim=4, ids=3)
    with pytest.raises(ValueError, match=message):
        re_ranking(*change(_matrices(qf, gf)))


@pytest.mark.parametrize("params,message", [
    (dict(k1=0), "k1 must be at least 1"), (dict(k1=2.0), "k1 must be an integer"),
    (dict(k2=0), "k2"), (dict(k1=4, k2=6), r"k2 must be in \[1, k1 \+ 1\]"),
    (dict(lambda_value=-0.1), "lambda_value"), (dict(lambda_value=1.5), "lambda_value"),
    (dict(lambda_value=float("nan")), "lambda_value"),
])
def test_bad_parameters(params, message):
    qf, gf, _, _ = _features(5, 12, dim=4, ids=3)
    with pytest.raises(ValueError, match=message):
        re_ranking(*_matrices(qf, gf), **params)
    with pytest.raises(ValueError, match=message):
        re_ranking_features(qf, gf, **params)


@pytest.mark.parametrize("change,message", [
    (lambda q, g: (q, g[:, :3]), "dims"),
    (lambda q, g: (q[0], g), "2-D"),
    (lambda q, g: (q[:0], g), "empty"),
    (lambda q, g: (q, np.full_like(g, np.nan)), "NaN"),
    (lambda q, g: (q, np.full_like(g, np.inf)), "the features contain NaN or infinite values"),
    (lambda q, g: (q, g[0]), r"gallery_features must be a 2-D \(items, dims\) matrix, got shape \(4,\)"),
    (lambda q, g: (q[0], g), r"query_features must be a 2-D"),
    (lambda q, g: (q, g[:0]), r"empty query or gallery set: 5 queries, 0 gallery items"),
    (lambda q, g: (q * 0, g * 0), r"the squared distances: item 0 has all its distances zero"),
])
def test_bad_features(change, message):
    qf, gf, _, _ = _features(5, 12, dim=4, ids=3)
    with pytest.raises(ValueError, match=message):
        re_ranking_features(*change(qf, gf))


def test_bad_chunk_size():
    qf, gf, _, _ = _features(5, 12, dim=4, ids=3)
    with pytest.raises(ValueError, match="chunk_size"):
        re_ranking_features(qf, gf, chunk_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_gpu():
    qf, gf, _, _ = _features(25, 90, seed=1)
    expected = re_ranking_features(qf, gf)
    _assert_close(re_ranking_features(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda()),
                  expected)


def test_a_gallery_of_one_item():
    qf, gf, _, _ = _features(4, 6, dim=4, ids=3, seed=10)
    gf = gf[:1]
    mats = _matrices(qf, gf)
    for k1, k2 in ((20, 6), (2, 1)):
        expected = reference_re_ranking(*mats, k1=k1, k2=k2)
        _assert_close(re_ranking(*mats, k1=k1, k2=k2), expected)
        _assert_close(re_ranking_features(qf, gf, k1=k1, k2=k2), expected)


def test_integer_matrices_and_the_smallest_k1():
    """Integer distance matrices are ranked as floats; k1 = 1 (one neighbour) is a valid setting."""
    qf, gf, _, _ = _features(6, 14, dim=4, ids=3, seed=11)
    mats = [np.round(m * 1000) for m in _matrices(qf, gf)]
    _assert_close(re_ranking(*(m.astype(np.int64) for m in mats), k1=3, k2=2), re_ranking(*mats, k1=3, k2=2))
    mats = _matrices(qf, gf)
    for k2 in (1, 2):
        _assert_close(re_ranking(*mats, k1=1, k2=k2), reference_re_ranking(*mats, k1=1, k2=k2))
        _assert_close(re_ranking_features(qf, gf, k1=1, k2=k2), reference_re_ranking(*mats, k1=1, k2=k2))
