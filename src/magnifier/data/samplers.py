"""Samplers for metric-learning ReID training.

``RandomIdentitySampler`` builds the "P x K" batches used by batch-hard triplet
training: every batch holds ``P`` distinct identities with ``K`` images each.

Lightning integration (read from ``pytorch_lightning`` / ``lightning_fabric`` 2.6)
-------------------------------------------------------------------------------
* ``pytorch_lightning/trainer/connectors/data_connector.py``:
  ``_DataConnector._requires_distributed_sampler(dataloader)`` is true only when
  ``use_distributed_sampler`` is set, the run ``is_distributed`` *and*
  ``not isinstance(dataloader.sampler, DistributedSampler)`` (and the dataset is
  not iterable).  When it is true, ``_prepare_dataloader`` calls
  ``_resolve_sampler`` -> ``_get_distributed_sampler``, which (for anything that
  is not a ``RandomSampler``/``SequentialSampler``) wraps the user sampler in
  ``lightning_fabric.utilities.distributed.DistributedSamplerWrapper``; the
  wrapper then keeps only every ``num_replicas``-th index of *our* stream, which
  would cut each P x K batch across ranks.  ``_update_dataloader``
  (``pytorch_lightning/utilities/data.py``) then re-instantiates the DataLoader
  from its saved ``__init__`` arguments with the new sampler.  Otherwise (and
  outside prediction) the DataLoader object is returned unchanged.
  ``Fabric.setup_dataloaders`` uses the same ``isinstance(..., DistributedSampler)``
  test (``lightning_fabric/fabric.py``).
* Therefore ``RandomIdentitySampler`` subclasses
  ``torch.utils.data.distributed.DistributedSampler``: Lightning leaves the
  DataLoader (and our sampler) untouched and our sampler does the per-rank split
  itself.  ``DistributedSampler.__init__`` is *not* called (it needs an
  initialised process group when ``num_replicas``/``rank`` are None); instead the
  attributes DistributedSampler/Lightning may read are provided here
  (``num_replicas``, ``rank``, ``epoch``, ``shuffle``, ``seed``, ``drop_last``,
  ``num_samples``, ``total_size``, ``dataset``).
* ``set_epoch``: ``lightning_fabric.utilities.data._set_sampler_epoch`` calls
  ``set_epoch(epoch)`` on ``dataloader.sampler`` and on
  ``dataloader.batch_sampler.sampler`` if they have one; the fit loop calls it in
  ``FitLoop.on_advance_start`` (``pytorch_lightning/loops/fit_loop.py``) at the
  start of every training epoch with ``epoch_progress.current.processed``
  (the evaluation loop and ``_process_dataloader`` call it for val/test too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = ["EPOCH_MODES", "RandomIdentitySampler"]

#: Allowed values of ``RandomIdentitySampler(epoch_mode=...)`` (see the class docstring).
EPOCH_MODES = ("pad", "drop")


def _dist_world() -> tuple[int, int]:
    """(world_size, rank) of the default process group, or (1, 0) if there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class RandomIdentitySampler(DistributedSampler):
    """P x K identity sampler for batch-hard triplet training (DDP-aware).

    Each batch of ``batch_size = P * K`` consecutive yielded indices holds ``P``
    distinct identities with exactly ``K`` (= ``num_instances``) images each.
    Use it with ``DataLoader(dataset, batch_size=P * K, sampler=sampler,
    drop_last=True)``; the sampler yields flat dataset indices in batch order.

    Chunks.
        At the start of an epoch the images of every identity are shuffled and
        cut into chunks of ``K``.  A leftover partial chunk -- or the single
        chunk of an identity with fewer than ``K`` images -- is filled up with
        that identity's own images (its other images without replacement when
        there are enough, otherwise with replacement, as in the "strong
        baseline"), so every chunk has exactly ``K`` indices of one identity.
        An identity with ``n`` images therefore has ``ceil(n / K)`` chunks.

    Epoch definition (``epoch_mode``).
        ``"pad"`` (default) is the chunking above and the fixed-length epoch below.
        ``"drop"`` is the epoch of the authors' sampler (reid-strong-baseline /
        MagnifierNet ``RandomIdentitySampler``): an identity with fewer than ``K``
        images is first resampled *with replacement* to exactly ``K`` images; the
        images of every identity are shuffled and cut into ``n // K`` chunks, the
        ``n mod K`` leftover images are *dropped* for this epoch (not padded).  Then
        each step draws ``P * W`` distinct identities uniformly at random among those
        that still have unused chunks and takes one chunk from each; an identity
        leaves the pool once its chunks are used up, and the epoch ends as soon as
        fewer than ``P * W`` identities remain (their chunks are not used).  With
        ``W = 1`` this is exactly the authors' rule (``P`` identities); with ``W``
        ranks the global step of ``P * W`` identities is split across ranks as in
        ``"pad"`` mode.  The number of steps ``S`` is random (it depends on which
        identities run out first), between the bounds of :meth:`drop_step_bounds`;
        ``num_steps`` / ``len`` compute it from the current epoch's schedule (cached
        per ``(seed, epoch, W)``), so ``len`` always matches what the iteration yields.
        The drop-mode RNG is seeded like pad mode, so it is deterministic per
        ``(seed, epoch, W)``, but it is our own numpy RNG: the schedules differ from
        the authors' Python ``random`` ones.

    Epoch length (``"pad"``).
        With ``W = num_replicas`` the epoch has a fixed number of global steps
        ``S = max(1, total_chunks // (P * W))``, known in advance, so
        ``len(sampler) = S * P * K`` indices *on this rank* (``S`` batches).
        At each step ``P * W`` distinct identities are drawn at random among
        the identities that still have unused chunks this epoch (weighted by
        their number of unused chunks, so large identities are not left over);
        when fewer than ``P * W`` such identities remain, the step is topped up
        with other random identities for which fresh chunks are drawn.  On
        roughly balanced data an epoch thus sees (almost) every image once.

    DDP.
        All ranks use the same ``seed`` and therefore generate the same global
        schedule.  The ``P * W`` identities of a step are split so that rank
        ``r`` gets identities ``[r * P, (r + 1) * P)``: identities are disjoint
        across ranks at every step and every rank has the same number of
        batches.  ``num_replicas``/``rank`` default to the initialised
        ``torch.distributed`` process group (resolved lazily, at ``len`` /
        ``iter`` time), else 1 / 0.  At least ``P * W`` identities are needed.

    Determinism.
        The schedule of an epoch depends only on ``(seed, epoch, W)``: the RNG
        is ``numpy.random.default_rng(SeedSequence([seed, epoch]))``.  Call
        :meth:`set_epoch` every epoch (Lightning does it automatically).

    It subclasses :class:`~torch.utils.data.distributed.DistributedSampler` only so
    that Lightning (``use_distributed_sampler=True``) does not wrap it in a
    ``DistributedSamplerWrapper`` that would split P x K batches across ranks.

    Args:
        pids: ``pids[i]`` is the identity of dataset sample ``i``.
        num_instances: ``K``, images per identity in a batch.
        batch_size: ``P * K``; must be a multiple of ``num_instances``.
        seed: base seed, shared by all ranks.
        num_replicas: number of ranks ``W`` (None: from torch.distributed).
        rank: this rank (None: from torch.distributed).
        epoch_mode: epoch definition, ``"pad"`` (pad leftover chunks, fixed epoch length) or
            ``"drop"`` (the authors' definition: drop leftovers, stop when fewer than
            ``P * W`` identities have chunks).  Not the epoch number (see :meth:`set_epoch`).
        with_seeds: yield ``(index, seed)`` pairs instead of indices: ``seed`` (from
            :meth:`sample_seeds`) seeds the augmentation of that sample, so a sample's
            augmentation depends on ``(seed, epoch, position)`` alone, whichever loader worker
            draws it and however many workers there are, and an epoch resumed half-way
            (:meth:`resume_at`) sees exactly the images and augmentations it would have seen.
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_instances: int = 4,
        batch_size: int = 64,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        epoch_mode: str = "pad",
        with_seeds: bool = False,
    ) -> None:
        # Deliberately not DistributedSampler.__init__ (needs a process group).
        Sampler.__init__(self)
        if not isinstance(epoch_mode, str) or epoch_mode not in EPOCH_MODES:
            raise ValueError(
                f"epoch_mode={epoch_mode!r}: the epoch definition must be one of "
                f"{', '.join(repr(m) for m in EPOCH_MODES)}"
            )
        num_instances = int(num_instances)
        batch_size = int(batch_size)
        if num_instances < 1:
            raise ValueError(f"num_instances (K) must be >= 1, got {num_instances}")
        if batch_size < num_instances or batch_size % num_instances != 0:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of num_instances "
                f"({num_instances}): a batch holds P = batch_size // num_instances identities "
                f"with K = num_instances images each"
            )
        if num_replicas is not None and int(num_replicas) < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if rank is not None and int(rank) < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")

        pid_array = np.asarray(pids).reshape(-1)
        if pid_array.size == 0:
            raise ValueError("RandomIdentitySampler needs at least one sample (pids is empty)")
        unique_pids, inverse = np.unique(pid_array, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(unique_pids))
        # Sample indices of every identity, in dataset order (identities in sorted pid order).
        self._index_groups: list[np.ndarray] = np.split(
            order.astype(np.int64), np.cumsum(counts)[:-1]
        )
        self._unique_pids = unique_pids
        self._chunks_per_id = -(-counts // num_instances)  # ceil(n / K), >= 1
        # "drop": n // K chunks, or 1 for an identity resampled up to K images.
        self._drop_chunks_per_id = np.where(counts < num_instances, 1, counts // num_instances)
        self.epoch_mode = epoch_mode
        self.with_seeds = bool(with_seeds)
        self._resume: tuple[int, int] | None = None
        self._drop_cache: tuple[tuple[int, int, int], np.ndarray] | None = None

        self.pids = pid_array
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = int(seed)
        self.epoch = 0
        self._num_replicas = None if num_replicas is None else int(num_replicas)
        self._rank = None if rank is None else int(rank)
        # Attributes of DistributedSampler that its methods / Lightning may read.
        self.dataset = None
        self.shuffle = True
        self.drop_last = True
        if self._num_replicas is not None and self._rank is not None:
            self._validate_rank(self._num_replicas, self._rank)
        # Fail early for P > num_ids; with a lazily resolved world size the P * W check
        # happens again at len()/iter() time.
        self._validate_num_ids(self._num_replicas if self._num_replicas is not None else 1)

    # ------------------------------------------------------------------ properties
    @property
    def num_replicas(self) -> int:
        """Number of ranks ``W`` (lazily taken from torch.distributed when not given)."""
        return self._num_replicas if self._num_replicas is not None else _dist_world()[0]

    @num_replicas.setter
    def num_replicas(self, value: int | None) -> None:
        self._num_replicas = None if value is None else int(value)

    @property
    def rank(self) -> int:
        """This rank (lazily taken from torch.distributed when not given)."""
        return self._rank if self._rank is not None else _dist_world()[1]

    @rank.setter
    def rank(self, value: int | None) -> None:
        self._rank = None if value is None else int(value)

    @property
    def num_identities(self) -> int:
        """Number of distinct identities in ``pids``."""
        return len(self._unique_pids)

    @property
    def num_steps(self) -> int:
        """Number of batches per epoch on every rank: ``max(1, total_chunks // (P * W))`` in
        ``"pad"`` mode; in ``"drop"`` mode the length of the current epoch's schedule."""
        return self.steps_per_epoch(self.num_replicas)

    def steps_per_epoch(self, world: int) -> int:
        """Batches per epoch and rank with ``world`` ranks (a method, not only the property, so
        mutation testing reaches the formula).  In ``"drop"`` mode the count is random per epoch:
        it is that of the current epoch's (``self.epoch``) schedule with ``world`` ranks."""
        self._validate_num_ids(world)
        if self.epoch_mode == "drop":
            return len(self._drop_schedule(world))
        return max(1, int(self._chunks_per_id.sum()) // (self.num_pids_per_batch * world))

    def drop_step_bounds(self, world: int = 1) -> tuple[int, int]:
        """``(lower, upper)`` bounds on the ``"drop"``-mode steps per epoch with ``world`` ranks.

        With ``c_i`` chunks per identity (``n // K``, or 1 below ``K`` images), ``C = sum c_i``
        and ``Q = P * world`` identities per step: the most steps any draw order can reach is
        the largest ``t`` with ``sum_i min(c_i, t) >= Q * t``; the epoch stops with fewer than
        ``Q`` identities left, holding at most the ``Q - 1`` largest ``c_i``, so it has at least
        ``ceil((C - sum of the Q - 1 largest c_i) / Q)`` steps (and at least 1).
        """
        self._validate_num_ids(world)
        q = self.num_pids_per_batch * world
        c = np.sort(self._drop_chunks_per_id.astype(np.int64))[::-1]
        total = int(c.sum())
        lower = max(1, -(-(total - int(c[: q - 1].sum())) // q))
        upper = 0
        for t in range(1, total // q + 1):  # sum(min(c, t)) - q * t is concave in t
            if int(np.minimum(c, t).sum()) >= q * t:
                upper = t
            else:
                break
        return lower, upper

    @property
    def num_samples(self) -> int:
        """Indices yielded on this rank per epoch (DistributedSampler attribute)."""
        return len(self)

    @property
    def total_size(self) -> int:
        """Indices yielded over all ranks per epoch (DistributedSampler attribute)."""
        return len(self) * self.num_replicas

    # ------------------------------------------------------------------ validation
    def _validate_num_ids(self, world: int) -> None:
        needed = self.num_pids_per_batch * world
        if self.num_identities < needed:
            raise ValueError(
                f"RandomIdentitySampler needs at least P * num_replicas = "
                f"{self.num_pids_per_batch} * {world} = {needed} distinct identities, "
                f"but the data has only {self.num_identities} "
                f"(batch_size={self.batch_size}, num_instances={self.num_instances}); "
                f"lower batch_size or use fewer devices"
            )

    @staticmethod
    def _validate_rank(world: int, rank: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")

    # ------------------------------------------------------------------ sampling
    def set_epoch(self, epoch: int) -> None:
        """Select the schedule of ``epoch`` (same epoch -> same schedule)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_steps * self.num_pids_per_batch * self.num_instances

    def _rng(self) -> np.random.Generator:
        mask = (1 << 64) - 1  # SeedSequence entropy must be non-negative
        return np.random.default_rng(np.random.SeedSequence([self.seed & mask, self.epoch & mask]))

    def _fill(
        self, rng: np.random.Generator, chunk: np.ndarray, all_idxs: np.ndarray
    ) -> np.ndarray:
        """Pad ``chunk`` to K indices with images of the same identity."""
        pad = self.num_instances - len(chunk)
        if pad <= 0:
            return chunk
        pool = np.setdiff1d(all_idxs, chunk, assume_unique=True)
        if len(pool) >= pad:
            extra = rng.choice(pool, size=pad, replace=False)
        else:  # not enough distinct images: strong-baseline convention (with replacement)
            extra = rng.choice(all_idxs, size=pad, replace=True)
        return np.concatenate([chunk, extra])

    def _make_chunks(self, rng: np.random.Generator, idxs: np.ndarray) -> np.ndarray:
        """Shuffle ``idxs`` and cut them into (num_chunks, K) full chunks."""
        k = self.num_instances
        perm = rng.permutation(idxs)
        n_full = len(perm) // k
        chunks = [perm[: n_full * k].reshape(n_full, k)]
        if len(perm) % k:
            chunks.append(self._fill(rng, perm[n_full * k :], idxs)[None, :])
        return np.concatenate(chunks, axis=0)

    def _drop_schedule(self, world: int) -> np.ndarray:
        """The ``"drop"``-mode global schedule ``(S, P * world, K)`` of the current epoch.

        Cached for the last ``(seed, epoch, world)`` so that ``len`` and ``iter`` agree cheaply.
        """
        key = (self.seed, self.epoch, int(world))
        if self._drop_cache is not None and self._drop_cache[0] == key:
            return self._drop_cache[1]
        self._validate_num_ids(world)
        rng = self._rng()
        k = self.num_instances
        per_step = self.num_pids_per_batch * world

        chunks = []
        for idxs in self._index_groups:
            if len(idxs) < k:  # authors' rule: resample a small identity up to K, with replacement
                idxs = rng.choice(idxs, size=k, replace=True)
            perm = rng.permutation(idxs)
            n_full = len(perm) // k
            chunks.append(perm[: n_full * k].reshape(n_full, k))  # leftover n mod K dropped
        remaining = self._drop_chunks_per_id.astype(np.int64).copy()
        used = np.zeros_like(remaining)

        steps = []
        while True:
            avail = np.flatnonzero(remaining > 0)
            if len(avail) < per_step:  # authors' stopping rule
                break
            chosen = rng.choice(avail, size=per_step, replace=False)  # uniform, random order
            steps.append(np.stack([chunks[i][used[i]] for i in chosen.tolist()]))
            used[chosen] += 1
            remaining[chosen] -= 1
        schedule = np.stack(steps).astype(np.int64, copy=False)  # >= 1 step: >= P * W identities
        self._drop_cache = (key, schedule)
        return schedule

    def global_schedule(self) -> np.ndarray:
        """The epoch's global schedule, shape ``(S, P * W, K)`` of dataset indices.

        ``schedule[s, r * P:(r + 1) * P]`` are the ``P`` chunks of rank ``r`` at step ``s``.
        """
        world = self.num_replicas
        if self.epoch_mode == "drop":
            return self._drop_schedule(world).copy()
        self._validate_num_ids(world)
        rng = self._rng()
        n_ids = self.num_identities
        per_step = self.num_pids_per_batch * world
        num_steps = self.num_steps

        chunks = [self._make_chunks(rng, idxs) for idxs in self._index_groups]
        used = np.zeros(n_ids, dtype=np.int64)
        remaining = self._chunks_per_id.astype(np.int64).copy()
        schedule = np.empty((num_steps, per_step, self.num_instances), dtype=np.int64)

        for step in range(num_steps):
            avail = np.flatnonzero(remaining > 0)
            if len(avail) >= per_step:
                weights = remaining[avail] / remaining[avail].sum()
                chosen = rng.choice(avail, size=per_step, replace=False, p=weights)
                fresh = np.empty(0, dtype=np.int64)
            else:
                others = np.setdiff1d(np.arange(n_ids), avail, assume_unique=True)
                fresh = rng.choice(others, size=per_step - len(avail), replace=False)
                chosen = np.concatenate([avail, fresh])
            chosen = rng.permutation(chosen)  # random rank assignment
            fresh_set = set(fresh.tolist())
            for slot, ident in enumerate(chosen.tolist()):
                if ident in fresh_set:
                    idxs = self._index_groups[ident]
                    if len(idxs) >= self.num_instances:
                        chunk = rng.choice(idxs, size=self.num_instances, replace=False)
                    else:
                        chunk = self._fill(rng, rng.permutation(idxs), idxs)
                else:
                    chunk = chunks[ident][used[ident]]
                    used[ident] += 1
                    remaining[ident] -= 1
                schedule[step, slot] = chunk
        return schedule

    def sample_seeds(self, shape: tuple[int, ...]) -> np.ndarray:
        """One augmentation seed per slot of this epoch's global schedule (``shape``), a function
        of ``(seed, epoch, slot)`` only: the same on every rank, for any number of loader workers."""
        mask = (1 << 64) - 1
        rng = np.random.default_rng(np.random.SeedSequence([self.seed & mask, self.epoch & mask, 1]))
        return rng.integers(0, 2**32, size=shape, dtype=np.int64)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next pass over ``epoch`` start after its first ``batches`` batches (a run
        resumed from a checkpoint saved mid-epoch); a pass over any other epoch is whole."""
        self._resume = (int(epoch), int(batches))

    def __iter__(self) -> Iterator:
        world, rank = self.num_replicas, self.rank
        self._validate_rank(world, rank)
        p = self.num_pids_per_batch
        schedule = self.global_schedule()
        local = schedule[:, rank * p : (rank + 1) * p].reshape(-1)
        skip = 0
        resume, self._resume = getattr(self, "_resume", None), None
        if resume is not None and resume[0] == self.epoch:
            skip = min(resume[1] * self.batch_size, len(local))
        if not self.with_seeds:
            return iter(local[skip:].tolist())
        seeds = self.sample_seeds(schedule.shape)[:, rank * p : (rank + 1) * p].reshape(-1)
        return iter(zip(local[skip:].tolist(), seeds[skip:].tolist()))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ids={self.num_identities}, P={self.num_pids_per_batch}, "
            f"K={self.num_instances}, batch_size={self.batch_size}, seed={self.seed}, "
            f"epoch={self.epoch}, num_replicas={self._num_replicas}, rank={self._rank}, "
            f"epoch_mode={self.epoch_mode!r})"
        )
