"""Tests for magnifier.data.samplers.RandomIdentitySampler (P x K identity sampler)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from magnifier.data.samplers import RandomIdentitySampler


def _batches(sampler: RandomIdentitySampler, pids) -> list[list[int]]:
    idx = list(sampler)
    pids = np.asarray(pids)
    bs = sampler.batch_size
    assert len(idx) % bs == 0
    return [pids[idx[i : i + bs]].tolist() for i in range(0, len(idx), bs)]


def _assert_pk(batch_pids, p: int, k: int) -> None:
    counts = Counter(batch_pids)
    assert len(counts) == p, counts
    assert set(counts.values()) == {k}, counts


def _unbalanced_pids(num_ids: int = 40, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 15, size=num_ids)  # many identities with fewer than K images
    pids = np.repeat(np.arange(num_ids) * 3 + 100, sizes)  # non-contiguous pid values
    return rng.permutation(pids).tolist()


# --------------------------------------------------------------------------- P x K
@pytest.mark.parametrize("k,batch_size", [(4, 32), (2, 8), (5, 15)])
def test_pk_property_unbalanced(k, batch_size):
    pids = _unbalanced_pids()
    s = RandomIdentitySampler(pids, num_instances=k, batch_size=batch_size, seed=3)
    idx = list(s)
    assert len(idx) == len(s) == s.num_steps * batch_size
    assert all(isinstance(i, int) and 0 <= i < len(pids) for i in idx)
    batches = _batches(s, pids)
    assert len(batches) == s.num_steps
    for b in batches:
        _assert_pk(b, batch_size // k, k)


def test_identities_with_fewer_than_k_images():
    # every identity has 1..3 images, K = 4 -> filled with replacement
    pids = np.repeat(np.arange(20), [1, 2, 3] * 6 + [1, 2]).tolist()
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16, seed=0)
    assert s.num_steps == 20 // 4  # one chunk per identity
    for b in _batches(s, pids):
        _assert_pk(b, 4, 4)
    # each chunk contains all of that identity's images at least once
    assert set(s) == set(range(len(pids)))


def test_epoch_length_formula_and_coverage_balanced():
    k, bs, num_ids, per_id = 4, 32, 50, 12
    pids = np.repeat(np.arange(num_ids), per_id)
    s = RandomIdentitySampler(pids.tolist(), num_instances=k, batch_size=bs, seed=1)
    total_chunks = num_ids * per_id // k  # 150
    assert s.num_steps == total_chunks // (bs // k)  # 18
    assert len(s) == s.num_steps * bs
    for epoch in range(3):
        s.set_epoch(epoch)
        idx = list(s)
        # S * P * K = 576 of 600 samples can be seen: (almost) everything is covered
        assert len(set(idx)) >= 0.9 * len(pids)
        assert len(set(idx)) >= len(idx) - 2 * bs


def test_tiny_dataset_has_at_least_one_step():
    pids = [0, 1, 2, 3]
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16)
    assert s.num_steps == 1 and len(s) == 16
    _assert_pk(_batches(s, pids)[0], 4, 4)


# --------------------------------------------------------------------------- determinism
def test_determinism_and_set_epoch():
    pids = _unbalanced_pids()
    a = RandomIdentitySampler(pids, num_instances=4, batch_size=32, seed=7)
    b = RandomIdentitySampler(pids, num_instances=4, batch_size=32, seed=7)
    e0 = list(a)
    assert e0 == list(b) == list(a)
    a.set_epoch(1)
    assert a.epoch == 1
    e1 = list(a)
    assert e1 != e0
    b.set_epoch(1)
    assert list(b) == e1
    a.set_epoch(0)
    assert list(a) == e0
    c = RandomIdentitySampler(pids, num_instances=4, batch_size=32, seed=8)
    assert list(c) != e0


# --------------------------------------------------------------------------- DDP (simulated)
@pytest.mark.parametrize("world", [2, 3])
def test_simulated_ranks_disjoint_identities(world):
    pids = _unbalanced_pids(num_ids=60)
    p, k = 4, 4
    samplers = [
        RandomIdentitySampler(
            pids, num_instances=k, batch_size=p * k, seed=5, num_replicas=world, rank=r
        )
        for r in range(world)
    ]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        assert len({len(s) for s in samplers}) == 1
        per_rank = [_batches(s, pids) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1
        assert len(per_rank[0]) == samplers[0].num_steps
        for step in zip(*per_rank):
            id_sets = []
            for b in step:
                _assert_pk(b, p, k)
                id_sets.append(set(b))
            union = set().union(*id_sets)
            assert len(union) == p * world  # disjoint across ranks
        # consistent with the global schedule
        sched = samplers[0].global_schedule()
        assert sched.shape == (samplers[0].num_steps, p * world, k)
        for r, s in enumerate(samplers):
            assert list(s) == sched[:, r * p : (r + 1) * p].reshape(-1).tolist()


def test_rank_and_world_resolution_without_process_group():
    s = RandomIdentitySampler(list(range(16)), num_instances=1, batch_size=4)
    assert s.num_replicas == 1 and s.rank == 0 and s.epoch == 0
    s2 = RandomIdentitySampler(
        list(range(16)), num_instances=1, batch_size=4, num_replicas=4, rank=3
    )
    assert s2.num_replicas == 4 and s2.rank == 3
    assert len(s2) == 4 and s2.total_size == 16 and s2.num_samples == 4


# --------------------------------------------------------------------------- errors
def test_too_few_identities_raises():
    pids = np.repeat(np.arange(6), 4).tolist()
    with pytest.raises(ValueError, match="at least"):
        RandomIdentitySampler(pids, num_instances=4, batch_size=32)  # P = 8 > 6
    with pytest.raises(ValueError, match="8 distinct identities"):
        # P * W = 4 * 2 > 6
        RandomIdentitySampler(pids, num_instances=4, batch_size=16, num_replicas=2, rank=0)
    # lazily resolved world size: the error is raised when iterating / len
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16)
    s.num_replicas = 2
    with pytest.raises(ValueError, match="identities"):
        len(s)


def test_batch_size_not_multiple_of_k_raises():
    with pytest.raises(ValueError, match="multiple of num_instances"):
        RandomIdentitySampler(list(range(100)), num_instances=4, batch_size=30)
    with pytest.raises(ValueError):
        RandomIdentitySampler(list(range(100)), num_instances=0, batch_size=30)
    with pytest.raises(ValueError):
        RandomIdentitySampler(
            list(range(100)), num_instances=1, batch_size=4, num_replicas=2, rank=2
        )


def test_is_a_distributed_sampler_with_expected_attributes():
    s = RandomIdentitySampler(
        _unbalanced_pids(), num_instances=4, batch_size=16, seed=2, num_replicas=2, rank=1
    )
    assert isinstance(s, DistributedSampler)
    assert s.shuffle is True and s.drop_last is True and s.seed == 2 and s.dataset is None
    assert s.num_samples == len(s) and s.total_size == 2 * len(s)


# --------------------------------------------------------------------------- Lightning
pl = pytest.importorskip("pytorch_lightning")

P, K = 4, 4


def _tensor_data(num_ids: int = 24, seed: int = 0):
    pids = np.asarray(_unbalanced_pids(num_ids=num_ids, seed=seed))
    x = torch.randn(len(pids), 3)
    return pids, TensorDataset(x, torch.as_tensor(pids))


class _TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.records: list[tuple[int, list[int], int]] = []

    def training_step(self, batch, batch_idx):
        x, pid = batch
        sampler = self.trainer.train_dataloader.sampler
        self.records.append((self.current_epoch, pid.tolist(), sampler.epoch))
        return self.layer(x).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_single_device_keeps_sampler_and_calls_set_epoch():
    pids, ds = _tensor_data()
    sampler = RandomIdentitySampler(pids.tolist(), num_instances=K, batch_size=P * K, seed=0)
    loader = DataLoader(ds, batch_size=P * K, sampler=sampler, drop_last=True)
    model = _TinyModule()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=True,
    )
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.train_dataloader is loader  # passed through unchanged
    assert trainer.train_dataloader.sampler is sampler
    steps = sampler.num_steps
    assert len(model.records) == 2 * steps
    for epoch, batch_pids, sampler_epoch in model.records:
        _assert_pk(batch_pids, P, K)
        assert sampler_epoch == epoch  # set_epoch(epoch) was called by the fit loop
    assert {r[2] for r in model.records} == {0, 1}
    assert sampler.epoch == 1
    # the two epochs used different schedules
    assert [r[1] for r in model.records[:steps]] != [r[1] for r in model.records[steps:]]


def test_lightning_distributed_sampler_replacement_skipped():
    """With a (not launched) 2-device DDP trainer Lightning would inject a DistributedSamplerWrapper
    into a loader with a plain custom sampler, but leaves ours (a DistributedSampler) alone."""
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.data import _update_dataloader

    pids, ds = _tensor_data()
    sampler = RandomIdentitySampler(
        pids.tolist(), num_instances=K, batch_size=P * K, seed=0, num_replicas=2, rank=0
    )
    loader = DataLoader(ds, batch_size=P * K, sampler=sampler, drop_last=True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False
    )
    connector = trainer._data_connector
    assert trainer._accelerator_connector.is_distributed
    assert not connector._requires_distributed_sampler(loader)
    assert connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader

    # control: a custom sampler that is not a DistributedSampler would be wrapped
    plain = DataLoader(ds, batch_size=P * K, sampler=list(range(len(ds))), drop_last=True)
    assert connector._requires_distributed_sampler(plain)

    # if Lightning ever re-instantiates the DataLoader from its init args, ours survives intact
    rebuilt = _update_dataloader(loader, loader.sampler)
    assert rebuilt.sampler is sampler and rebuilt.batch_size == P * K and rebuilt.drop_last
    got = [b[1].tolist() for b in rebuilt]
    assert got == [b[1].tolist() for b in loader]
    for b in got:
        _assert_pk(b, P, K)


_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset
    from magnifier.data.samplers import RandomIdentitySampler

    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    P, K = 4, 4
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(30), rng.integers(2, 10, size=30))
    ds = TensorDataset(torch.randn(len(pids), 3), torch.as_tensor(pids))


    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.records = []

        def training_step(self, batch, batch_idx):
            x, pid = batch
            s = self.trainer.train_dataloader.sampler
            self.records.append([self.current_epoch, batch_idx, pid.tolist(), s.epoch,
                                 type(s).__name__, s.num_replicas, s.rank])
            return self.layer(x).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)


    if __name__ == "__main__":
        sampler = RandomIdentitySampler(pids.tolist(), num_instances=K, batch_size=P * K, seed=0)
        loader = DataLoader(ds, batch_size=P * K, sampler=sampler, drop_last=True)
        model = M()
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                             logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=True)
        trainer.fit(model, train_dataloaders=loader)
        with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"records": model.records, "num_steps": sampler.num_steps}, f)
        # what every DDP script must do: close the group before the interpreter exits (else
        # it can abort with SIGABRT after training; see magnifier.distributed)
        from magnifier.distributed import close_process_group
        assert close_process_group()
    """
)


@pytest.mark.multiprocess
def test_lightning_ddp_two_processes(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PL_DISABLE_FORK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    recs = [r["records"] for r in res]
    num_steps = res[0]["num_steps"]
    assert res[1]["num_steps"] == num_steps
    assert len(recs[0]) == len(recs[1]) == 2 * num_steps
    for r, rank_recs in enumerate(recs):
        for epoch, _, batch_pids, sampler_epoch, cls_name, world, rank in rank_recs:
            assert cls_name == "RandomIdentitySampler"  # not wrapped by Lightning
            assert (world, rank) == (2, r)
            assert sampler_epoch == epoch
            _assert_pk(batch_pids, P, K)
    for a, b in zip(*recs):
        assert a[:2] == b[:2]  # same (epoch, batch_idx)
        assert not set(a[2]) & set(b[2])  # disjoint identities at every step
        assert len(set(a[2]) | set(b[2])) == 2 * P


# --------------------------------------------------------------------------- top-up and weighting
def _skewed_pids() -> list[int]:
    """One identity with 40 images (10 chunks of K=4) and 30 identities with 4 (1 chunk each)."""
    return [0] * 40 + [i for i in range(1, 31) for _ in range(4)]


@pytest.mark.parametrize("world", [1, 2])
def test_top_up_path_keeps_p_distinct_identities_with_fresh_chunks(world):
    """Identity 0 holds half of the 8W chunks, the other 4W identities one each: S = 2 steps of
    P * W = 4W identities. After the first step at most two identities have unused chunks, so
    the second step is topped up with identities already used this epoch. They must be other
    identities than the ones left (P distinct per batch), each with K distinct images."""
    pids = [0] * (16 * world) + [i for i in range(1, 4 * world + 1) for _ in range(4)]
    pids_arr = np.asarray(pids)
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16, seed=0, num_replicas=world, rank=0)
    assert s.num_steps == 2
    for epoch in range(25):
        s.set_epoch(epoch)
        schedule = s.global_schedule()  # (2, 4W, K)
        step_ids = []
        for step in schedule:
            step_pids = pids_arr[step]
            assert (step_pids == step_pids[:, :1]).all()  # a chunk is one identity
            assert all(len(set(c.tolist())) == 4 for c in step)  # K distinct images
            idents = step_pids[:, 0].tolist()
            assert len(set(idents)) == 4 * world, idents  # P * W distinct identities
            step_ids.append(set(idents))
        # the top-up path ran: at least 4W - 2 identities of the second step were used before
        assert len(step_ids[0] & step_ids[1]) >= 4 * world - 2
        for r in range(world):
            s_r = RandomIdentitySampler(pids, num_instances=4, batch_size=16, seed=0, num_replicas=world, rank=r)
            s_r.set_epoch(epoch)
            for b in _batches(s_r, pids):
                _assert_pk(b, 4, 4)


def test_top_up_is_reached_on_the_skewed_split():
    """On the skewed split the big identity can give one chunk per step only, so the last steps
    of an epoch run out of identities with unused chunks: every batch must still be P x K."""
    pids = _skewed_pids()
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16, seed=1)
    topped_up = 0
    for epoch in range(20):
        s.set_epoch(epoch)
        batches = _batches(s, pids)
        for b in batches:
            _assert_pk(b, 4, 4)
        counts = Counter(np.asarray(pids)[list(s)].tolist())
        # an identity of 4 images used twice in an epoch was drawn by the top-up
        topped_up += any(counts[i] > 4 for i in range(1, 31))
    assert topped_up > 0


def test_identities_are_drawn_weighted_by_their_remaining_chunks():
    """Weighting by unused chunks keeps the big identity from being left over: over 20 epochs of
    the skewed split an epoch covers 95.4 % of the images on average (measured; a uniform draw
    covers 86.3 %), and the big identity is in 82 % of the steps (uniform: 50 %)."""
    pids = _skewed_pids()
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16, seed=0)
    coverage, big_steps = [], []
    for epoch in range(20):
        s.set_epoch(epoch)
        idx = list(s)
        coverage.append(len(set(idx)) / len(pids))
        big_steps.append(sum(0 in b for b in _batches(s, pids)) / s.num_steps)
    assert np.mean(coverage) > 0.93, np.mean(coverage)
    assert np.mean(big_steps) > 0.7, np.mean(big_steps)  # measured 0.82; uniform: 0.50


def test_first_draw_probabilities_follow_the_chunk_weights():
    """The first step's identities are a weighted draw without replacement: identity 0 (10 of 40
    chunks) is in it far more often than an identity with one chunk. With P = 1 the first pick's
    probability is exactly its share of chunks: 10/40 against 1/40."""
    pids = _skewed_pids()
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=4, seed=0)
    firsts = []
    for epoch in range(2000):
        s.set_epoch(epoch)
        firsts.append(int(np.asarray(pids)[s.global_schedule()[0, 0, 0]]))
    share = np.mean(np.asarray(firsts) == 0)
    # binomial(2000, 0.25): sd ~ 0.0097; uniform over 31 identities would give ~0.032
    assert abs(share - 0.25) < 0.05, share


def test_partial_chunks_are_filled_with_other_images_of_the_identity_without_repeats():
    """An identity with at least K images never repeats an image inside a chunk: its leftover
    partial chunk is filled with its *other* images, drawn without replacement (repeats are
    only for identities with fewer than K images)."""
    sizes = [5, 6, 7, 9, 13, 4, 8]
    pids = np.repeat(np.arange(len(sizes)), sizes).tolist()
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=8, seed=0)
    rng = np.random.default_rng(0)
    for epoch in range(30):
        s.set_epoch(epoch)
        schedule = s.global_schedule()
        for chunk in schedule.reshape(-1, 4):
            assert len(set(chunk.tolist())) == 4, chunk
    # the chunk filler on its own: a leftover of r images of an identity with 5 gets 4 - r others
    idxs = np.arange(10, 15)
    for _ in range(30):
        for r in range(1, 4):
            filled = s._fill(rng, idxs[:r], idxs)
            assert len(filled) == 4 and len(set(filled.tolist())) == 4
            assert set(filled.tolist()) <= set(idxs.tolist())


def test_top_up_with_identities_of_fewer_than_k_images():
    """The top-up draws fresh chunks for identities already used this epoch; an identity with
    fewer than K images gets all its images, padded with repeats of its own."""
    pids = [0] * 16 + [i for i in range(1, 5) for _ in range(2)]  # 4 chunks + 4 small identities
    pids_arr = np.asarray(pids)
    s = RandomIdentitySampler(pids, num_instances=4, batch_size=16, seed=0)
    assert s.num_steps == 2
    for epoch in range(25):
        s.set_epoch(epoch)
        schedule = s.global_schedule()
        assert len(set(pids_arr[schedule[0, :, 0]]) & set(pids_arr[schedule[1, :, 0]])) >= 2  # topped up
        for chunk in schedule.reshape(-1, 4):
            ident = pids_arr[chunk[0]]
            assert (pids_arr[chunk] == ident).all()
            own = set(np.flatnonzero(pids_arr == ident).tolist())
            if len(own) < 4:
                assert set(chunk.tolist()) == own  # every image of the small identity is there
            else:
                assert len(set(chunk.tolist())) == 4


def test_defaults_are_the_strong_baseline_batch():
    """P = 16 identities x K = 4 images, seed 0: the strong baseline's (and the paper's) batch."""
    s = RandomIdentitySampler(list(range(20)) * 4)
    assert (s.num_instances, s.batch_size, s.num_pids_per_batch, s.seed) == (4, 64, 16, 0)


# --------------------------------------------------------------------------- epoch_mode="drop"
SIZES = [1, 3, 4, 5, 9]  # identity sizes of the hand-made index (pids 0, 10, 20, 30, 40)


def _sized_pids(sizes=SIZES) -> list[int]:
    return np.repeat(np.arange(len(sizes)) * 10, sizes).tolist()


def _check_drop_schedule(schedule: np.ndarray, pids, k: int, per_step: int) -> dict:
    """Reference check of one drop-mode epoch, written out plainly.

    Per identity with n images: ``n // K`` chunks and ``n % K`` leftover images when n >= K,
    one (resampled) chunk and no leftover when n < K. Every step takes one chunk from each of
    ``per_step`` distinct identities that still had chunks; the epoch stops as soon as fewer
    than ``per_step`` identities have chunks left. Returns the replayed bookkeeping.
    """
    pids = np.asarray(pids)
    images = {p: set(np.flatnonzero(pids == p).tolist()) for p in np.unique(pids).tolist()}
    chunks_left = {p: (len(v) // k if len(v) >= k else 1) for p, v in images.items()}
    leftover = {p: (len(v) % k if len(v) >= k else 0) for p, v in images.items()}
    seen: dict[int, list[int]] = {p: [] for p in images}
    assert schedule.ndim == 3 and schedule.shape[1:] == (per_step, k)
    for step in schedule.tolist():
        available = [p for p, c in chunks_left.items() if c > 0]
        assert len(available) >= per_step  # the epoch had not ended yet
        step_ids = []
        for chunk in step:
            owners = {int(pids[i]) for i in chunk}
            assert len(owners) == 1  # a chunk is K images of one identity
            p = owners.pop()
            assert chunks_left[p] > 0  # only identities that still have chunks are drawn
            chunks_left[p] -= 1
            seen[p].extend(chunk)
            step_ids.append(p)
        assert len(set(step_ids)) == per_step  # distinct identities in the step
    assert sum(c > 0 for c in chunks_left.values()) < per_step  # stopping rule
    for p, idxs in seen.items():
        assert set(idxs) <= images[p]
        if len(images[p]) >= k:
            assert len(idxs) == len(set(idxs))  # no image repeats (no resampling for n >= K)
            if chunks_left[p] == 0:  # all chunks used: exactly the n mod K leftover unseen
                assert len(images[p] - set(idxs)) == leftover[p]
        else:
            assert len(idxs) == k * (1 - chunks_left[p])  # one resampled chunk of K
    return {"chunks_left": chunks_left, "leftover": leftover, "seen": seen, "steps": len(schedule)}


@pytest.mark.parametrize("k", [2, 4])
def test_drop_mode_against_reference(k):
    pids = _sized_pids()
    p = 2
    s = RandomIdentitySampler(pids, num_instances=k, batch_size=p * k, seed=0, epoch_mode="drop")
    assert s.epoch_mode == "drop"
    lower, upper = s.drop_step_bounds()
    # c = [1, 1, 2, 2, 4], C = 10 (K=2) and c = [1, 1, 1, 1, 2], C = 6 (K=4)
    assert (lower, upper) == ((3, 5) if k == 2 else (2, 3))
    steps_seen = Counter()
    all_idx = []
    for epoch in range(60):
        s.set_epoch(epoch)
        sched = s.global_schedule()
        ref = _check_drop_schedule(sched, pids, k, p)
        # the number of batches is the replayed one, and len() matches the iteration
        flat = list(s)
        assert flat == sched.reshape(-1).tolist()
        assert len(s) == len(flat) == ref["steps"] * p * k == s.num_steps * p * k
        assert s.steps_per_epoch(1) == ref["steps"]
        for b in _batches(s, pids):
            _assert_pk(b, p, k)
        # images repeat within the epoch only for the resampled identities (n < K)
        small = {i for i, q in enumerate(pids) if SIZES[q // 10] < k}
        big = [i for i in flat if i not in small]
        assert len(big) == len(set(big))
        # leftover images are never drawn: at most n - (n mod K) images of each identity
        for q, v in ref["seen"].items():
            n = SIZES[q // 10]
            if n >= k:
                assert len(set(v)) <= n - n % k
        steps_seen[ref["steps"]] += 1
        all_idx.append(flat)
    assert set(steps_seen) <= set(range(lower, upper + 1))
    assert min(steps_seen) == lower and max(steps_seen) == upper  # the count is random per epoch
    assert len({tuple(f) for f in all_idx}) > 1
    s.set_epoch(3)
    assert list(s) == all_idx[3]  # deterministic per (seed, epoch)


def test_drop_mode_leftover_counts_and_exact_steps():
    # P = 1: every chunk is used, so S = sum of chunk counts and exactly n mod K images are left
    pids = _sized_pids()
    s = RandomIdentitySampler(pids, num_instances=2, batch_size=2, seed=4, epoch_mode="drop")
    chunks = [max(1, n // 2) for n in SIZES]  # [1, 1, 2, 2, 4]
    assert s.num_steps == sum(chunks) == 10
    ref = _check_drop_schedule(s.global_schedule(), pids, 2, 1)
    assert ref["leftover"] == {0: 0, 10: 1, 20: 0, 30: 1, 40: 1}
    unseen = {q: SIZES[q // 10] - len(set(v)) for q, v in ref["seen"].items()}
    assert unseen == {0: 0, 10: 1, 20: 0, 30: 1, 40: 1}
    assert len(list(s)) == len(s) == 20
    # three identities of one chunk, P = 2: one step, the third identity is never drawn
    pids3 = np.repeat([0, 1, 2], 4).tolist()
    s3 = RandomIdentitySampler(pids3, num_instances=4, batch_size=8, seed=0, epoch_mode="drop")
    for epoch in range(5):
        s3.set_epoch(epoch)
        assert s3.num_steps == 1 and len(list(s3)) == len(s3) == 8
        assert s3.drop_step_bounds() == (1, 1)
    # pad mode on the same index: ceil(n / K) chunks, max(1, C // P) steps
    pad = RandomIdentitySampler(pids, num_instances=2, batch_size=4, seed=0)
    assert pad.num_steps == sum(-(-n // 2) for n in SIZES) // 2 == 6


def test_drop_mode_draws_identities_uniformly_like_the_authors():
    """K=4, P=2, chunk counts [1, 1, 1, 1, 2]: the epoch has 2 steps iff the 2-chunk identity is
    drawn in neither step: (6/10) * (1/3) = 0.2 under the authors' uniform random.sample."""
    import random

    def authors_steps(rng: random.Random) -> int:  # plain rewrite of the authors' loop
        left = {0: 1, 10: 1, 20: 1, 30: 1, 40: 2}
        steps = 0
        while sum(c > 0 for c in left.values()) >= 2:
            for q in rng.sample(sorted(q for q, c in left.items() if c > 0), 2):
                left[q] -= 1
            steps += 1
        return steps

    rng = random.Random(0)
    ref = np.mean([authors_steps(rng) == 2 for _ in range(4000)])
    s = RandomIdentitySampler(_sized_pids(), num_instances=4, batch_size=8, seed=1, epoch_mode="drop")
    ours = []
    for epoch in range(1000):
        s.set_epoch(epoch)
        ours.append(s.num_steps == 2)
    assert abs(ref - 0.2) < 0.03 and abs(np.mean(ours) - 0.2) < 0.05


def test_drop_mode_two_ranks_cover_the_global_schedule():
    pids = _sized_pids()
    k, p, world = 2, 2, 2
    samplers = [
        RandomIdentitySampler(
            pids, num_instances=k, batch_size=p * k, seed=9, num_replicas=world, rank=r, epoch_mode="drop"
        )
        for r in range(world)
    ]
    for epoch in range(10):
        for s in samplers:
            s.set_epoch(epoch)
        sched = samplers[0].global_schedule()
        assert np.array_equal(sched, samplers[1].global_schedule())  # same on every rank
        _check_drop_schedule(sched, pids, k, p * world)  # P * W identities per global step
        flats = [list(s) for s in samplers]
        assert len(samplers[0]) == len(samplers[1]) == len(flats[0]) == len(flats[1])
        assert len(flats[0]) == sched.shape[0] * p * k
        for r in range(world):
            assert flats[r] == sched[:, r * p : (r + 1) * p].reshape(-1).tolist()
        together = np.stack([np.asarray(f).reshape(-1, p, k) for f in flats], axis=1)
        assert np.array_equal(together.reshape(sched.shape), sched)


def test_pad_mode_unchanged():
    pids = _sized_pids()
    default = RandomIdentitySampler(pids, num_instances=2, batch_size=4, seed=0)
    pad = RandomIdentitySampler(pids, num_instances=2, batch_size=4, seed=0, epoch_mode="pad")
    assert default.epoch_mode == pad.epoch_mode == "pad"
    # golden schedules of the pad sampler (recorded before epoch_mode= existed)
    e0 = [15, 21, 3, 1, 12, 9, 16, 19, 0, 0, 6, 4, 2, 1, 13, 17, 10, 8, 20, 18, 11, 10, 14, 18]
    e1 = [16, 20, 3, 1, 0, 0, 5, 7, 14, 19, 8, 9, 6, 4, 17, 13, 2, 3, 11, 10, 12, 9, 18, 21]
    assert list(default) == list(pad) == e0 and len(pad) == 24 and pad.num_steps == 6
    pad.set_epoch(1)
    assert list(pad) == e1
    drop = RandomIdentitySampler(pids, num_instances=2, batch_size=4, seed=0, epoch_mode="drop")
    assert list(drop) != e0


@pytest.mark.parametrize("bad", ["authors", "Pad", "", None, 3])
def test_bad_epoch_mode_rejected(bad):
    with pytest.raises(ValueError, match="'pad', 'drop'"):
        RandomIdentitySampler(_sized_pids(), num_instances=2, batch_size=4, epoch_mode=bad)


def test_datamodule_passes_sampler_epoch():
    from types import SimpleNamespace

    from magnifier.data.datamodule import ReIDDataModule
    from magnifier.errors import UserError

    dm = ReIDDataModule(batch_size=4, num_instances=2, num_workers=0, sampler_epoch="drop")
    dm.train_set = SimpleNamespace(pids=_sized_pids())
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, RandomIdentitySampler) and sampler.epoch_mode == "drop"
    assert ReIDDataModule(num_workers=0).sampler_epoch == "pad"
    with pytest.raises(UserError, match="sampler_epoch"):
        ReIDDataModule(num_workers=0, sampler_epoch="authors")
