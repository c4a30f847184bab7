"""Steps per epoch of RandomIdentitySampler: our ``epoch_mode="pad"`` vs the authors' ``epoch_mode="drop"``.

On a Market-1501-sized training index: 751 identities, 12,936 images, P16 x K4 (batch 64).
Market's exact per-identity image counts are not available offline, so they are drawn with a
fixed seed (a clipped log-normal, then nudged to sum to 12,936; spread 2..72, mean 17.2).
Drop mode's step count is random per epoch: it is reported over several epochs, with the
bounds of ``RandomIdentitySampler.drop_step_bounds``.
Usage: python benchmarks/sampler_epoch.py [--epochs 50] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from magnifier.data.samplers import RandomIdentitySampler

NUM_IDS, NUM_IMAGES, LOW, HIGH = 751, 12936, 2, 72


def market_like_counts(seed: int = 0) -> np.ndarray:
    """751 per-identity image counts in [2, 72] summing to 12,936 (a synthetic stand-in)."""
    rng = np.random.default_rng(seed)
    mean = NUM_IMAGES / NUM_IDS
    sigma = 0.65
    raw = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=NUM_IDS)
    counts = np.clip(np.rint(raw), LOW, HIGH).astype(np.int64)
    counts[0], counts[1] = LOW, HIGH  # make the spread's ends present
    while (diff := int(counts.sum()) - NUM_IMAGES) != 0:  # nudge random identities by one
        i = int(rng.integers(2, NUM_IDS))
        step = -1 if diff > 0 else 1
        if LOW <= counts[i] + step <= HIGH:
            counts[i] += step
    return rng.permutation(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50, help="drop-mode epochs to sample")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic counts")
    args = ap.parse_args()

    counts = market_like_counts(args.seed)
    pids = np.repeat(np.arange(NUM_IDS), counts)
    print(f"Market-1501-sized training index (synthetic per-identity counts, seed {args.seed}; "
          f"Market's exact counts are not available offline): {NUM_IDS} identities, "
          f"{counts.sum()} images, {counts.min()}..{counts.max()} per identity, mean {counts.mean():.2f}, "
          f"median {np.median(counts):.0f}")
    for k in (4,):
        p = 64 // k
        pad = RandomIdentitySampler(pids, num_instances=k, batch_size=p * k, seed=0, epoch_mode="pad")
        drop = RandomIdentitySampler(pids, num_instances=k, batch_size=p * k, seed=0, epoch_mode="drop")
        pad_chunks = int((-(-counts // k)).sum())
        drop_chunks = int(np.where(counts < k, 1, counts // k).sum())
        dropped = int(np.where(counts >= k, counts % k, 0).sum())
        steps = []
        for epoch in range(args.epochs):
            drop.set_epoch(epoch)
            steps.append(drop.num_steps)
            assert len(drop) == steps[-1] * p * k
        drop.set_epoch(0)
        assert len(list(drop)) == len(drop)
        lower, upper = drop.drop_step_bounds()
        steps = np.asarray(steps)
        print(f"P{p} x K{k} (batch {p * k}), 1 rank:")
        print(f"  pad : {pad.num_steps} steps/epoch (fixed) = {pad_chunks} chunks // {p}, "
              f"{pad.num_steps * p * k} images/epoch")
        print(f"  drop: {steps.min()}..{steps.max()} steps/epoch over {args.epochs} epochs "
              f"(mean {steps.mean():.2f}, epoch 0: {steps[0]}); {drop_chunks} chunks, "
              f"{dropped} leftover images dropped per epoch, {int((counts < k).sum())} identities "
              f"resampled up to K")
        print(f"  drop bounds (K={k}): lower {lower}, upper {upper} steps/epoch "
              f"(upper = {drop_chunks} // {p} = {drop_chunks // p} unless the largest identities cap it)")
        print(f"  drop / pad: {steps.mean() / pad.num_steps:.3f} of the pad epoch's steps")


if __name__ == "__main__":
    main()
