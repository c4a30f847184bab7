"""k-reciprocal re-ranking against a direct port of the authors' dense algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magnifier.evaluation import euclidean_distance, evaluate_rank
from magnifier.evaluation.rerank import re_ranking, re_ranking_features


def _reference(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The published algorithm, step by step, with dense matrices and loops (float32)."""
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        recip = forward[np.where(backward == i)[0]]
        expansion = recip
        for candidate in recip:
            half = int(np.around(k1 / 2.0))
            c_forward = initial_rank[candidate, :half + 1]
            c_backward = initial_rank[c_forward, :half + 1]
            c_recip = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros((1, all_num), dtype=np.float32)
        nz = np.where(V[i] != 0)[0]
        for j in nz:
            images = inv_index[j]
            temp_min[0, images] += np.minimum(V[i, j], V[images, j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]


def _clustered(q, g, dim, ids, seed, noise=0.7):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qf = (centres[q_pids] + noise * rng.normal(size=(q, dim))).astype(np.float32)
    gf = (centres[g_pids] + noise * rng.normal(size=(g, dim))).astype(np.float32)
    return qf, gf, q_pids, g_pids


def _matrices(qf, gf):
    qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    return (euclidean_distance(qf, gf).numpy(), euclidean_distance(qf, qf).numpy(),
            euclidean_distance(gf, gf).numpy())


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 5, 3, 0.3), (2, 8, 1, 0.5),
                                             (3, 12, 13, 0.0), (4, 4, 2, 1.0)])
def test_matches_reference(seed, k1, k2, lam):
    qf, gf, _, _ = _clustered(25, 90, 12, 15, seed)
    mats = _matrices(qf, gf)
    expected = _reference(*mats, k1=k1, k2=k2, lambda_value=lam)
    got = re_ranking(*mats, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (25, 90) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    from_features = re_ranking_features(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(from_features, expected, rtol=0, atol=1e-5)


def test_expansion_happens_and_changes_the_result():
    # Tight clusters: the k-reciprocal sets expand through their neighbours' half sets.
    qf, gf, _, _ = _clustered(20, 120, 8, 10, 7, noise=0.3)
    mats = _matrices(qf, gf)
    expected = _reference(*mats, k1=10, k2=4)
    np.testing.assert_allclose(re_ranking(*mats, k1=10, k2=4), expected, atol=1e-5)
    assert not np.allclose(expected, mats[0] ** 2 / (mats[0] ** 2).max(), atol=1e-2)


def test_non_symmetric_inputs_follow_the_column_normalisation():
    rng = np.random.default_rng(5)
    qg, qq, gg = rng.random((15, 40)), rng.random((15, 15)), rng.random((40, 40))
    np.fill_diagonal(qq, 0)
    np.fill_diagonal(gg, 0)
    expected = _reference(qg, qq, gg, k1=6, k2=3)
    np.testing.assert_allclose(re_ranking(qg, qq, gg, k1=6, k2=3), expected, atol=1e-5)
    # Torch input gives the same.
    got = re_ranking(*(torch.from_numpy(x) for x in (qg, qq, gg)), k1=6, k2=3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_small_sets_with_fewer_items_than_k1():
    qf, gf, _, _ = _clustered(3, 8, 4, 3, 9)
    mats = _matrices(qf, gf)
    np.testing.assert_allclose(re_ranking(*mats, k1=20, k2=6),
                               _reference(*mats, k1=20, k2=6), atol=1e-5)


def test_rerank_improves_map_on_clustered_data():
    qf, gf, q_pids, g_pids = _clustered(60, 400, 16, 40, 11, noise=1.2)
    q_cams, g_cams = np.zeros(60, int), np.ones(400, int)
    plain = evaluate_rank(_matrices(qf, gf)[0], q_pids, g_pids, q_cams, g_cams)
    reranked = evaluate_rank(re_ranking_features(qf, gf), q_pids, g_pids, q_cams, g_cams)
    assert reranked["mAP"] > plain["mAP"]


def test_bad_input():
    qf, gf, _, _ = _clustered(5, 12, 4, 3, 0)
    qg, qq, gg = _matrices(qf, gf)
    with pytest.raises(ValueError, match="g_g_dist"):
        re_ranking(qg, qq, gg[:5])
    with pytest.raises(ValueError, match="2-D"):
        re_ranking(qg[0], qq, gg)
    bad = qg.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        re_ranking(bad, qq, gg)
    with pytest.raises(ValueError, match="empty"):
        re_ranking(qg[:0], qq[:0, :0], gg)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(ValueError, match="k2"):
        re_ranking(qg, qq, gg, k1=4, k2=6)
    with pytest.raises(ValueError, match="lambda"):
        re_ranking(qg, qq, gg, lambda_value=1.5)
    with pytest.raises(ValueError, match="same D"):
        re_ranking_features(qf, gf[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        re_ranking_features(np.full_like(qf, np.nan), gf)
