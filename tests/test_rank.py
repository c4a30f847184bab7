"""Tests for magnifier.evaluation.rank.evaluate_rank (CMC / mAP / mINP, Market-1501 protocol)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from magnifier.evaluation import evaluate_rank
from magnifier.evaluation.rank import METHODS


def _random_problem(q, g, num_pids, num_cams, seed, *, dtype=np.float64, ties=False):
    """A random retrieval problem: (distmat (q, g), q_pids, g_pids, q_camids, g_camids).

    Distances are uniform in [0, 1) (almost surely without ties) or, with ``ties=True``, small
    integers so that many distances tie.
    """
    rng = np.random.default_rng(seed)
    if ties:
        distmat = rng.integers(0, 8, size=(q, g)).astype(dtype)
    else:
        distmat = rng.random((q, g)).astype(dtype)
    q_pids = rng.integers(0, num_pids, size=q)
    g_pids = rng.integers(0, num_pids, size=g)
    q_camids = rng.integers(0, num_cams, size=q)
    g_camids = rng.integers(0, num_cams, size=g)
    return distmat, q_pids, g_pids, q_camids, g_camids


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Plain per-query implementation: stable sort, drop same id + same camera, then count."""
    distmat = np.asarray(distmat)
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    skipped = 0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        same_cam = g_camids[order] == q_camids[i]
        keep = ~(same_pid & same_cam)
        matches = same_pid[keep]
        if not matches.any():
            skipped += 1
            continue
        ranks = np.flatnonzero(matches) + 1  # 1-based ranks of the true matches
        m = len(ranks)
        aps.append(np.mean(np.arange(1, m + 1) / ranks))
        inps.append(m / ranks[-1])
        cmc = np.zeros(max_rank)
        if ranks[0] <= max_rank:
            cmc[ranks[0] - 1:] = 1.0
        cmc_sum += cmc
    n = len(aps)
    return {
        "cmc": cmc_sum / n,
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "num_valid_queries": n,
        "num_skipped_queries": skipped,
    }


def _assert_same(result, expected):
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["mAP"], expected["mAP"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["mINP"], expected["mINP"], rtol=0, atol=1e-6)
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert result["num_skipped_queries"] == expected["num_skipped_queries"]


# Hand-worked example.
#
# Gallery (index: pid, camid):
#   g0: pid 1, cam 0     g1: pid 2, cam 1     g2: pid 1, cam 1
#   g3: pid 3, cam 0     g4: pid 1, cam 2     g5: pid 2, cam 0
#
# Query q0 (pid 1, cam 0), distances to g0..g5 = 0.10 0.30 0.15 0.20 0.90 0.40
#   g0 has the same pid AND camera -> removed (although it is the closest).
#   valid gallery by distance: g2 (0.15, match), g3 (0.20), g1 (0.30), g5 (0.40), g4 (0.90, match)
#   true matches at ranks 1 and 5:
#   AP = (1/1 + 2/5) / 2 = 7/10, INP = 2/5, first match at rank 1.
# Query q1 (pid 2, cam 1), distances = 0.60 0.05 0.70 0.10 0.80 0.30
#   g1 (pid 2, cam 1) removed.
#   valid: g3 (0.10), g5 (0.30, match), g0 (0.60), g2 (0.70), g4 (0.80)
#   true match at rank 2: AP = 1/2, INP = 1/2, first match at rank 2.
# Query q2 (pid 3, cam 0), distances = 0.50 0.50 0.50 0.01 0.50 0.50
#   the only pid-3 item, g3, is from camera 0 -> removed: no true match -> skipped.
#
# mAP  = (7/10 + 1/2) / 2 = 3/5
# mINP = (2/5 + 1/2) / 2 = 9/20
# CMC  = [1/2, 1, 1, 1, 1, ...] (q0 hits at rank 1, q1 at rank 2)
HAND_DISTMAT = np.array(
    [
        [0.10, 0.30, 0.15, 0.20, 0.90, 0.40],
        [0.60, 0.05, 0.70, 0.10, 0.80, 0.30],
        [0.50, 0.50, 0.50, 0.01, 0.50, 0.50],
    ]
)
HAND_Q_PIDS = np.array([1, 2, 3])
HAND_Q_CAMIDS = np.array([0, 1, 0])
HAND_G_PIDS = np.array([1, 2, 1, 3, 1, 2])
HAND_G_CAMIDS = np.array([0, 1, 1, 0, 2, 0])


@pytest.mark.parametrize("method", METHODS)
def test_hand_worked_example(method):
    result = evaluate_rank(
        HAND_DISTMAT, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMIDS, HAND_G_CAMIDS,
        max_rank=5, method=method,
    )
    np.testing.assert_allclose(result["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx(float(Fraction(3, 5)), abs=1e-12)
    assert result["mINP"] == pytest.approx(float(Fraction(9, 20)), abs=1e-12)
    assert result["num_valid_queries"] == 2
    assert result["num_skipped_queries"] == 1
    # Per-query AP through single-query calls.
    for i, ap in ((0, Fraction(7, 10)), (1, Fraction(1, 2))):
        single = evaluate_rank(
            HAND_DISTMAT[i:i + 1], HAND_Q_PIDS[i:i + 1], HAND_G_PIDS, HAND_Q_CAMIDS[i:i + 1],
            HAND_G_CAMIDS, max_rank=5, method=method,
        )
        assert single["mAP"] == pytest.approx(float(ap), abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_hand_worked_ties_are_broken_by_gallery_index(method):
    # One query (pid 1, cam 0); gallery g0..g3 = (pid 2, cam 1), (pid 1, cam 1), (pid 2, cam 1),
    # (pid 1, cam 2) at distances 0.5, 0.5, 0.5, 0.2. Stable order: g3, g0, g1, g2, so the
    # matches g3 and g1 are at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3.
    result = evaluate_rank(
        np.array([[0.5, 0.5, 0.5, 0.2]]), np.array([1]), np.array([2, 1, 2, 1]),
        np.array([0]), np.array([1, 1, 1, 2]), max_rank=4, method=method,
    )
    assert result["mAP"] == pytest.approx(5 / 6, abs=1e-12)
    assert result["mINP"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_allclose(result["cmc"], [1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_reference_without_ties(seed, method):
    problem = _random_problem(50, 300, 20, 4, seed)
    expected = _reference(*problem, max_rank=50)
    _assert_same(evaluate_rank(*problem, max_rank=50, method=method), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_matches_reference_with_ties(seed, method):
    problem = _random_problem(50, 300, 20, 4, seed, ties=True)
    expected = _reference(*problem, max_rank=20)
    _assert_same(evaluate_rank(*problem, max_rank=20, method=method), expected)


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_counting_method_resolves_ties_itself(seed, monkeypatch):
    # Integer distances in [0, 150) for 300 items: about two items per value, so many items
    # share a histogram bin, and tie exactly, with a true match. The counting method must
    # order them by gallery index without handing any row to the sort-based method.
    from magnifier.evaluation import rank

    rng = np.random.default_rng(seed)
    problem = list(_random_problem(50, 300, 20, 4, seed))
    problem[0] = rng.integers(0, 150, size=(50, 300)).astype(np.float64)
    expected = _reference(*problem, max_rank=20)

    def no_fallback(*args, **kwargs):
        raise AssertionError("unexpected fallback to the sort-based method")

    monkeypatch.setattr(rank, "_stats_sort", no_fallback)
    _assert_same(evaluate_rank(*problem, max_rank=20, method="count"), expected)


def test_massive_ties_fall_back_exactly():
    # Three distinct distances for 2,000 items: the counting method hands these rows over to
    # the sort-based one; the result must still equal the reference.
    rng = np.random.default_rng(5)
    problem = list(_random_problem(20, 2000, 10, 3, 5))
    problem[0] = rng.integers(0, 3, size=(20, 2000)).astype(np.float32)
    _assert_same(evaluate_rank(*problem, max_rank=10), _reference(*problem, max_rank=10))


def test_infinite_distances():
    problem = list(_random_problem(30, 200, 15, 3, 6))
    rng = np.random.default_rng(6)
    problem[0][rng.random(problem[0].shape) < 0.1] = np.inf
    problem[0][rng.random(problem[0].shape) < 0.05] = -np.inf
    expected = _reference(*problem, max_rank=10)
    for method in METHODS:
        _assert_same(evaluate_rank(*problem, max_rank=10, method=method), expected)


def test_float32_and_chunking_and_threads():
    problem = _random_problem(97, 500, 30, 5, 7, dtype=np.float32)
    expected = _reference(*problem, max_rank=30)
    for chunk_size, workers in ((None, None), (1, 1), (7, 2), (1000, 3)):
        result = evaluate_rank(*problem, max_rank=30, chunk_size=chunk_size, num_workers=workers)
        _assert_same(result, expected)


def test_many_gallery_items_of_one_id():
    # Like the Market-1501 distractors / junk ids: one gallery id with most of the images.
    problem = list(_random_problem(40, 1500, 25, 6, 8))
    problem[2][:1000] = -1
    problem[1][:5] = -1  # a few queries even share that id
    _assert_same(evaluate_rank(*problem, max_rank=10), _reference(*problem, max_rank=10))


def test_query_id_absent_from_gallery_is_skipped():
    problem = list(_random_problem(20, 100, 10, 3, 9))
    problem[1][:4] = 1000
    result = evaluate_rank(*problem, max_rank=10)
    expected = _reference(*problem, max_rank=10)
    assert result["num_skipped_queries"] >= 4
    _assert_same(result, expected)


def test_torch_input_equals_numpy_input():
    problem = _random_problem(40, 250, 15, 4, 11)
    as_torch = [torch.from_numpy(np.ascontiguousarray(x)) for x in problem]
    _assert_same(evaluate_rank(*as_torch, max_rank=20), evaluate_rank(*problem, max_rank=20))


def test_max_rank_larger_than_gallery():
    problem = _random_problem(10, 8, 4, 2, 12)
    result = evaluate_rank(*problem, max_rank=50)
    assert result["cmc"].shape == (50,)
    _assert_same(result, _reference(*problem, max_rank=50))
    # Every valid query has a true match within the gallery: the curve ends at 1.
    np.testing.assert_allclose(result["cmc"][8:], 1.0)


def test_all_queries_skipped_raises():
    distmat = np.random.default_rng(0).random((3, 4))
    with pytest.raises(ValueError, match="true match"):
        evaluate_rank(distmat, np.array([1, 1, 2]), np.array([1, 1, 2, 3]),
                      np.array([0, 0, 1]), np.array([0, 0, 1, 0]))


def test_invalid_inputs_raise():
    problem = list(_random_problem(5, 10, 3, 2, 13))
    with pytest.raises(ValueError, match="NaN"):
        bad = problem[0].copy()
        bad[2, 3] = np.nan
        evaluate_rank(bad, *problem[1:])
    with pytest.raises(ValueError, match="q_pids"):
        evaluate_rank(problem[0], problem[1][:4], *problem[2:])
    with pytest.raises(ValueError, match="ap_mode"):
        evaluate_rank(*problem, ap_mode="bogus")
    with pytest.raises(ValueError, match="method"):
        evaluate_rank(*problem, method="bogus")


def test_metrics_are_fractions():
    result = evaluate_rank(*_random_problem(60, 400, 20, 4, 14), max_rank=10)
    assert 0.0 < result["mINP"] <= 1.0 and 0.0 < result["mAP"] <= 1.0
    assert np.all(np.diff(result["cmc"]) >= 0) and 0.0 <= result["cmc"][0] <= 1.0
    assert isinstance(result["mAP"], float) and isinstance(result["num_valid_queries"], int)


# ---- Cases that mutation testing showed no test reached (make mutation) --------------------

@pytest.mark.parametrize("method", METHODS)
def test_single_match_at_rank_one_has_inp_one(method):
    # q0's only true match is the closest item: INP = 1/1. q1's matches are at ranks 1 and 2:
    # INP = 2/2, standard AP = (1/1 + 2/2)/2 = 1, trapezoid AP = ((1 + 1)/2 + (2/2 + 1/1)/2)/2 = 1.
    args = (np.array([1, 2]), np.array([1, 2, 2]), np.array([0, 0]), np.array([1, 1, 1]))
    d = np.array([[0.1, 0.5, 0.7], [0.9, 0.1, 0.2]])
    for ap_mode in ("standard", "trapezoid"):
        r = evaluate_rank(d, *args, max_rank=3, method=method, ap_mode=ap_mode, per_query=True)
        np.testing.assert_allclose(r["per_query"]["inp"], [1.0, 1.0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(r["per_query"]["ap"], [1.0, 1.0], rtol=0, atol=1e-12)


def test_rows_with_infinities_beside_finite_rows_in_one_chunk():
    """One chunk mixing rows with infinite distances (sort fallback), massive-tie rows (sort
    fallback from the counting method) and ordinary rows, the last query without any true
    match; both AP modes and both methods agree with each other and with the reference."""
    rng = np.random.default_rng(31)
    problem = list(_random_problem(12, 400, 8, 3, 31))
    problem[0][2, 5] = np.inf  # one row with an infinity
    problem[0][7, :] = np.inf
    problem[0][4] = rng.integers(0, 2, size=400)  # massive ties: handed to the sort method
    problem[1][-1] = 999  # last query: no true match
    expected = _reference(*problem, max_rank=10)
    results = {}
    for method in METHODS:
        for ap_mode in ("standard", "trapezoid"):
            results[method, ap_mode] = evaluate_rank(*problem, max_rank=10, method=method, ap_mode=ap_mode,
                                                     chunk_size=12, per_query=True)
        _assert_same(results[method, "standard"], expected)
    for key in ("ap", "inp", "first_rank", "num_matches"):
        np.testing.assert_allclose(results["count", "trapezoid"]["per_query"][key],
                                   results["sort", "trapezoid"]["per_query"][key], rtol=0, atol=1e-12)
    # The trapezoid AP differs from the standard one (otherwise the comparison above is empty).
    assert results["sort", "trapezoid"]["mAP"] < results["sort", "standard"]["mAP"]


def test_integer_distances_are_ranked_like_floats():
    problem = list(_random_problem(20, 120, 10, 3, 32, ties=True))
    as_int = [problem[0].astype(np.int64), *problem[1:]]
    for method in METHODS:
        _assert_same(evaluate_rank(*as_int, max_rank=10, method=method), _reference(*problem, max_rank=10))


def test_gallery_of_one_item_and_more_queries_than_gallery_items():
    # One gallery item: the padding of the same-id lookup must not index past it.
    r = evaluate_rank(np.array([[0.3], [0.2]]), np.array([4, 5]), np.array([4]), np.array([0, 0]), np.array([1]))
    assert (r["num_valid_queries"], r["num_skipped_queries"], r["mAP"]) == (1, 1, 1.0)
    # Many more queries than gallery columns, chunked: every query row is covered.
    problem = _random_problem(60, 9, 4, 2, 33)
    for method in METHODS:
        _assert_same(evaluate_rank(*problem, max_rank=5, method=method, chunk_size=4, num_workers=2),
                     _reference(*problem, max_rank=5))


def test_per_query_entries_of_a_skipped_query():
    r = evaluate_rank(HAND_DISTMAT, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMIDS, HAND_G_CAMIDS, per_query=True)
    pq = r["per_query"]
    assert pq["valid"].tolist() == [True, True, False]
    assert pq["num_matches"].tolist() == [2, 1, 0] and pq["first_rank"].tolist() == [1, 2, 0]
    assert np.isnan(pq["ap"][2]) and np.isnan(pq["inp"][2])
    assert "per_query" not in evaluate_rank(HAND_DISTMAT, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMIDS, HAND_G_CAMIDS)


def test_counting_chunks_keep_flat_bin_ids_exact_in_float32(monkeypatch):
    """Flat bin ids row * (B + 2) + bin are formed in the distances' dtype: a chunk's ids must
    stay below 2**24 to be exact in float32, whatever chunk_size the caller asks for."""
    from magnifier.evaluation import rank

    problem = _random_problem(1100, 6, 3, 2, 34, dtype=np.float32)
    opts = rank._Options(problem[2], problem[4], "count", "standard", "market", 5, 10, 0)
    opts.num_bins = 1 << 14  # as for an MSMT17-sized gallery
    seen = []
    real = rank._chunk_stats

    def spy(dist, *args):
        seen.append(dist.shape[0])
        return real(dist, *args)

    monkeypatch.setattr(rank, "_chunk_stats", spy)
    result = rank._evaluate_blocks([(0, problem[0])], problem[1], problem[3], opts, 5000, 1, False)
    assert max(seen) * (opts.num_bins + 2) <= 1 << 24 and sum(seen) == 1100
    _assert_same(result, _reference(*problem, max_rank=5))


def test_workspace_grows_for_a_larger_chunk():
    from magnifier.evaluation.rank import _Workspace

    w = _Workspace(2, 5, np.float32)
    buf, bins, mask = w.get(3)
    assert buf.shape == (3, 5) and buf.dtype == np.float32 and bins.shape == (3, 5) and bins.dtype == np.int64
    assert mask.shape == (15,) and mask.dtype == bool
    assert w.get(1)[0].shape == (1, 5)


def test_no_true_match_anywhere_message():
    with pytest.raises(ValueError, match=r"none of the 1 queries has a true match .*cannot compute CMC/mAP/mINP"):
        evaluate_rank(np.array([[0.1]]), np.array([1]), np.array([2]), np.array([0]), np.array([1]))


def test_smallest_settings_and_label_checks():
    problem = _random_problem(20, 60, 6, 3, 35)
    expected = _reference(*problem, max_rank=1)
    for method in METHODS:
        _assert_same(evaluate_rank(*problem, max_rank=1, method=method), expected)
    single = evaluate_rank(*problem, max_rank=5, protocol="cuhk03", num_repeats=1)
    assert single["cmc"].shape == (5,)
    with pytest.raises(ValueError, match="max_rank must be >= 1, got 0"):
        evaluate_rank(*problem, max_rank=0)
    # Column vectors of ids are flattened; float ids are refused by name, never truncated.
    d, q_pids, g_pids, q_cams, g_cams = problem
    _assert_same(evaluate_rank(d, q_pids[:, None], g_pids[:, None], q_cams[:, None], g_cams[:, None], max_rank=1),
                 expected)
    labels = {"q_pids": q_pids, "g_pids": g_pids, "q_camids": q_cams, "g_camids": g_cams}
    for name in labels:
        bad = {**labels, name: labels[name] + 0.5}
        with pytest.raises(ValueError, match=f"^{name} must hold integers, got dtype float64$"):
            evaluate_rank(d, bad["q_pids"], bad["g_pids"], bad["q_camids"], bad["g_camids"])
    with pytest.raises(ValueError, match=r"unknown protocol 'viper'; supported: market, cuhk03"):
        evaluate_rank(*problem, protocol="viper")
    with pytest.raises(ValueError, match=r"unknown method 'x'; supported: count, sort"):
        evaluate_rank(*problem, method="x")
    with pytest.raises(ValueError, match=r"unknown ap_mode 'x'; supported: standard, trapezoid"):
        evaluate_rank(*problem, ap_mode="x")
