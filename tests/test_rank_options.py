"""evaluate_rank options (trapezoidal AP, CUHK03 single-gallery-shot, per-query output) and
evaluate_features (streamed distances), each against straightforward references written here."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from magnifier.evaluation import euclidean_distance, evaluate_features, evaluate_rank
from magnifier.evaluation.rank import METHODS

from .test_rank import (HAND_DISTMAT, HAND_G_CAMIDS, HAND_G_PIDS, HAND_Q_CAMIDS, HAND_Q_PIDS,
                        _random_problem, _reference)


def _matlab_ap(good: set, junk: set, index) -> float:
    """A line-by-line port of the Market-1501 MATLAB ``compute_AP.m`` loop (trapezoid rule)."""
    ngood = len(good)
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect_size, j, good_now = 0, 0, 0
    for n in index:
        flag = n in good
        if flag:
            good_now += 1
        if n in junk:
            continue
        if flag:
            intersect_size += 1
        recall = intersect_size / ngood
        precision = intersect_size / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood:
            break
    return ap


def _reference_trapezoid_map(distmat, q_pids, g_pids, q_camids, g_camids) -> float:
    aps = []
    for i in range(distmat.shape[0]):
        index = np.argsort(distmat[i], kind="stable")
        same = g_pids == q_pids[i]
        good = set(np.flatnonzero(same & (g_camids != q_camids[i])).tolist())
        junk = set(np.flatnonzero(same & (g_camids == q_camids[i])).tolist())
        if good:
            aps.append(_matlab_ap(good, junk, index.tolist()))
    return float(np.mean(aps))


@pytest.mark.parametrize("method", METHODS)
def test_trapezoid_hand_worked(method):
    # q0: true matches at valid ranks 1 and 5: ((1/1 + 1) / 2 + (2/5 + 1/4) / 2) / 2 = 53/80.
    # q1: one match at rank 2: (1/2 + 0/1) / 2 = 1/4.  mAP = (53/80 + 1/4) / 2 = 73/160.
    result = evaluate_rank(HAND_DISTMAT, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMIDS, HAND_G_CAMIDS,
                           max_rank=5, ap_mode="trapezoid", method=method)
    assert result["mAP"] == pytest.approx(float(Fraction(73, 160)), abs=1e-12)
    # CMC and mINP do not depend on the AP definition.
    np.testing.assert_allclose(result["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    assert result["mINP"] == pytest.approx(0.45, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", METHODS)
def test_trapezoid_matches_matlab_port(seed, method):
    problem = _random_problem(40, 300, 12, 3, seed)
    result = evaluate_rank(*problem, ap_mode="trapezoid", method=method)
    assert result["mAP"] == pytest.approx(_reference_trapezoid_map(*problem), abs=1e-9)
    standard = evaluate_rank(*problem, method=method)
    # The trapezoid averages each match's precision with the lower one just before it.
    assert result["mAP"] < standard["mAP"]


def _reference_single_shot(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, repeats, seed):
    """Per query and repeat: keep the valid item of every id with the smallest random key."""
    num_g = distmat.shape[1]
    cmcs = []
    for i in range(distmat.shape[0]):
        valid = ~((g_pids == q_pids[i]) & (g_camids == q_camids[i]))
        if not np.any(valid & (g_pids == q_pids[i])):
            continue
        keys = np.random.default_rng([seed, i]).random((repeats, num_g))
        curve = np.zeros(max_rank)
        for t in range(repeats):
            chosen = {}
            for j in np.flatnonzero(valid):
                p = g_pids[j]
                if p not in chosen or keys[t, j] < keys[t, chosen[p]]:
                    chosen[p] = j
            kept = sorted(chosen.values(), key=lambda j: (distmat[i, j], j))
            rank = 1 + [g_pids[j] for j in kept].index(q_pids[i])
            curve += np.arange(1, max_rank + 1) >= rank
        cmcs.append(curve / repeats)
    return np.mean(cmcs, axis=0)


@pytest.mark.parametrize("method", METHODS)
def test_cuhk03_single_gallery_shot_matches_reference(method):
    problem = _random_problem(25, 120, 10, 2, 5)
    result = evaluate_rank(*problem, max_rank=8, protocol="cuhk03", num_repeats=4, seed=3,
                           method=method, chunk_size=7)
    expected = _reference_single_shot(*problem, max_rank=8, repeats=4, seed=3)
    np.testing.assert_allclose(result["cmc"], expected, rtol=0, atol=1e-12)
    # mAP and mINP are those of the full gallery.
    full = evaluate_rank(*problem, max_rank=8)
    assert result["mAP"] == pytest.approx(full["mAP"], abs=1e-12)
    assert result["mINP"] == pytest.approx(full["mINP"], abs=1e-12)
    # The draws are seeded: same seed, same curve; another seed, another curve.
    again = evaluate_rank(*problem, max_rank=8, protocol="cuhk03", num_repeats=4, seed=3)
    np.testing.assert_array_equal(again["cmc"], result["cmc"])
    other = evaluate_rank(*problem, max_rank=8, protocol="cuhk03", num_repeats=4, seed=4)
    assert not np.array_equal(other["cmc"], result["cmc"])


def test_cuhk03_equals_market_when_each_id_has_one_gallery_image():
    rng = np.random.default_rng(0)
    g_pids = np.arange(30)
    q_pids = rng.integers(0, 30, 50)
    distmat = rng.random((50, 30))
    problem = (distmat, q_pids, g_pids, np.zeros(50, int), np.ones(30, int))
    single = evaluate_rank(*problem, max_rank=10, protocol="cuhk03")
    market = evaluate_rank(*problem, max_rank=10)
    np.testing.assert_allclose(single["cmc"], market["cmc"], atol=1e-12)


def test_cuhk03_single_shot_is_at_least_multi_shot_rank1():
    # With one image per id, fewer distractors precede the match: CMC can only improve on
    # average; rank-k of the sampled gallery >= ... is not guaranteed per draw, but the
    # expected rank-1 is at least the multi-shot rank-1 when matches rank first.
    problem = _random_problem(60, 400, 20, 3, 9)
    single = evaluate_rank(*problem, max_rank=20, protocol="cuhk03")
    market = evaluate_rank(*problem, max_rank=20)
    assert np.all(np.diff(single["cmc"]) >= -1e-12)
    assert single["cmc"][-1] >= market["cmc"][-1] - 1e-12


def test_per_query_output():
    problem = _random_problem(30, 200, 15, 3, 4)
    result = evaluate_rank(*problem, per_query=True)
    pq = result["per_query"]
    assert pq["valid"].sum() == result["num_valid_queries"]
    assert np.isnan(pq["ap"][~pq["valid"]]).all() and (pq["first_rank"][~pq["valid"]] == 0).all()
    assert np.nanmean(pq["ap"]) == pytest.approx(result["mAP"], abs=1e-12)
    assert np.nanmean(pq["inp"]) == pytest.approx(result["mINP"], abs=1e-12)
    for i in np.flatnonzero(pq["valid"])[:5]:
        single = evaluate_rank(problem[0][i:i + 1], problem[1][i:i + 1], problem[2],
                               problem[3][i:i + 1], problem[4], max_rank=200)
        assert single["mAP"] == pytest.approx(pq["ap"][i], abs=1e-12)
        assert single["cmc"][pq["first_rank"][i] - 1] == 1.0
        assert pq["first_rank"][i] == 1 or single["cmc"][pq["first_rank"][i] - 2] == 0.0


def _feature_problem(q, g, dim, pids, cams, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(pids, dim))
    q_pids, g_pids = rng.integers(0, pids, q), rng.integers(0, pids, g)
    qf = (centres[q_pids] + rng.normal(size=(q, dim))).astype(np.float32)
    gf = (centres[g_pids] + rng.normal(size=(g, dim))).astype(np.float32)
    return qf, gf, q_pids, g_pids, rng.integers(0, cams, q), rng.integers(0, cams, g)


@pytest.mark.parametrize("block_size", [None, 7])
@pytest.mark.parametrize("ap_mode", ["standard", "trapezoid"])
def test_evaluate_features_equals_evaluate_rank(block_size, ap_mode):
    qf, gf, *ids = _feature_problem(45, 260, 16, 20, 3, 1)
    expected = evaluate_rank(euclidean_distance(torch.from_numpy(qf), torch.from_numpy(gf)),
                             *ids, ap_mode=ap_mode, per_query=True)
    result = evaluate_features(qf, gf, *ids, ap_mode=ap_mode, block_size=block_size,
                               chunk_size=5, per_query=True)
    # Same ranks; only the summation order of a padded row can move the last bit.
    np.testing.assert_array_equal(result["cmc"], expected["cmc"])
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)
    np.testing.assert_allclose(result["per_query"]["ap"], expected["per_query"]["ap"], atol=1e-12)
    np.testing.assert_array_equal(result["per_query"]["first_rank"],
                                  expected["per_query"]["first_rank"])
    # ... and equals the plain per-query reference on the float64 distances.
    d = np.sqrt(((qf[:, None, :].astype(np.float64) - gf[None]) ** 2).sum(-1))
    ref = _reference(d, *ids)
    if ap_mode == "standard":
        np.testing.assert_allclose(result["cmc"], ref["cmc"], atol=1e-6)
        assert result["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)


def test_evaluate_features_torch_input_and_cuhk03():
    qf, gf, *ids = _feature_problem(20, 90, 8, 10, 2, 2)
    a = evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf),
                          *(torch.from_numpy(x) for x in ids), protocol="cuhk03", block_size=3)
    b = evaluate_rank(euclidean_distance(torch.from_numpy(qf), torch.from_numpy(gf)), *ids,
                      protocol="cuhk03")
    np.testing.assert_array_equal(a["cmc"], b["cmc"])


def test_bad_inputs_give_clear_errors():
    qf, gf, q_pids, g_pids, q_cams, g_cams = _feature_problem(10, 30, 8, 5, 2, 3)
    with pytest.raises(ValueError, match="same D"):
        evaluate_features(qf, gf[:, :4], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_features(qf, gf, q_pids, g_pids[:-1], q_cams, g_cams)
    bad = qf.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="query_features contains NaN"):
        evaluate_features(bad, gf, q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="gallery_features contains NaN or infinite"):
        evaluate_features(qf, np.where(np.arange(30)[:, None] == 4, np.inf, gf), q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match=r"\(G, D\) with the same D, got \(10, 8\) and \(240,\)"):
        evaluate_features(qf, gf.reshape(-1), q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="empty"):
        evaluate_features(qf[:0], gf, q_pids[:0], g_pids, q_cams[:0], g_cams)
    problem = _random_problem(5, 10, 3, 2, 0)
    with pytest.raises(ValueError, match="protocol"):
        evaluate_rank(*problem, protocol="viper")
    with pytest.raises(ValueError, match="num_repeats"):
        evaluate_rank(*problem, protocol="cuhk03", num_repeats=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate_rank(np.zeros((0, 10)), problem[1][:0], problem[2], problem[3][:0], problem[4])
