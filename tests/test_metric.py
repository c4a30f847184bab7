"""Tests for magnifier.evaluation.metric.ReIDMetric (single process, simulated and real DDP)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from magnifier.evaluation import ReIDMetric, evaluate_rank


def _make_data(num_query=40, num_gallery=160, dim=16, num_pids=12, num_cams=4, seed=0):
    """Random L2-normalised features with ids, cameras, query flags and sample indices."""
    gen = torch.Generator().manual_seed(seed)
    n = num_query + num_gallery
    features = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    pids = torch.randint(0, num_pids, (n,), generator=gen)
    camids = torch.randint(0, num_cams, (n,), generator=gen)
    is_query = torch.zeros(n, dtype=torch.bool)
    is_query[:num_query] = True
    indices = torch.arange(n)
    return features, pids, camids, is_query, indices


def _expected(features, pids, camids, is_query):
    """evaluate_rank on float64 Euclidean distances computed directly."""
    q, g = is_query, ~is_query
    f = features.double()
    distmat = torch.sqrt(((f[q][:, None, :] - f[g][None, :, :]) ** 2).sum(-1))
    result = evaluate_rank(distmat, pids[q], pids[g], camids[q], camids[g], max_rank=50)
    return {
        "rank1": result["cmc"][0],
        "rank5": result["cmc"][4],
        "rank10": result["cmc"][9],
        "mAP": result["mAP"],
        "mINP": result["mINP"],
    }


def _assert_result(result, expected):
    assert set(result) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    for key, value in expected.items():
        assert result[key].ndim == 0 and result[key].dtype == torch.float32
        assert 0.0 <= float(result[key]) <= 1.0
        assert float(result[key]) == pytest.approx(float(value), abs=1e-6), key


def test_single_process_matches_evaluate_rank():
    data = _make_data()
    metric = ReIDMetric()
    perm = torch.randperm(len(data[0]), generator=torch.Generator().manual_seed(1))
    for batch in perm.split(32):  # query and gallery samples mixed, in random order
        metric.update(*(x[batch] for x in data))
    _assert_result(metric.compute(), _expected(*data[:4]))


def test_unnormalised_features():
    features, pids, camids, is_query, indices = _make_data(seed=3)
    features = features * torch.linspace(0.5, 3.0, len(features))[:, None]
    metric = ReIDMetric()
    metric.update(features, pids, camids, is_query, indices)
    _assert_result(metric.compute(), _expected(features, pids, camids, is_query))


def test_duplicated_samples_are_counted_once():
    data = _make_data(seed=2)
    n = len(data[0])
    reference = ReIDMetric()
    reference.update(*data)
    expected = reference.compute()

    # As a DistributedSampler would: two "ranks" with interleaved shards, the last one padded
    # by repeating the first samples; here fed to one metric in reverse rank order.
    padded = torch.cat([torch.arange(n), torch.arange(3)])
    metric = ReIDMetric()
    for shard in (padded[1::2], padded[0::2]):
        metric.update(*(x[shard] for x in data))
    result = metric.compute()
    for key in expected:
        assert float(result[key]) == float(expected[key]), key


@pytest.mark.filterwarnings("ignore:.*was called before the ..update.. method")
def test_compute_is_repeatable_and_reset_works():
    data = _make_data(seed=4)
    metric = ReIDMetric()
    metric.update(*data)
    first = metric.compute()
    second = metric.compute()
    assert all(float(first[k]) == float(second[k]) for k in first)
    metric.reset()
    with pytest.raises(ValueError):
        metric.compute()


def test_missing_gallery_or_bad_shapes_raise():
    features, pids, camids, is_query, indices = _make_data(seed=5)
    metric = ReIDMetric()
    metric.update(features, pids, camids, torch.ones_like(is_query), indices)
    with pytest.raises(ValueError, match="gallery"):
        metric.compute()
    with pytest.raises(ValueError, match="pids"):
        ReIDMetric().update(features, pids[:-1], camids, is_query, indices)


# ----------------------------------------------------------------------------------------------
# Real two-process DDP (gloo on localhost).


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        data = _make_data(num_gallery=161, seed=7)  # 201 samples: the last shard is padded
        n = len(data[0])
        # DistributedSampler without shuffling: pad to a multiple of world_size by repeating the
        # first samples, then take every world_size-th index starting at the rank.
        total = math.ceil(n / world_size) * world_size
        padded = torch.cat([torch.arange(n), torch.arange(total - n)])
        shard = padded[rank:total:world_size]
        metric = ReIDMetric()
        for batch in shard.split(16):
            metric.update(*(x[batch] for x in data))
        result = metric.compute()
        torch.save({k: v.clone() for k, v in result.items()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_two_process_gloo_matches_single_process(tmp_path):
    data = _make_data(num_gallery=161, seed=7)
    single = ReIDMetric()
    single.update(*data)
    expected = single.compute()

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        for key in expected:
            assert float(result[key]) == float(expected[key]), (rank, key)
