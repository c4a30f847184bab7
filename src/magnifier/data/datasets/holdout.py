"""A validation split held out from the training identities, for model selection.

The test split (query and gallery) is for the final figure only: checkpoints, sweeps and
early stops choose on this split instead. Whole identities leave training, so a validation
figure measures generalisation to unseen people, as the test split does.

Within each held-out identity the images are divided as in Market-1501's own split: in every
camera where the identity has at least two images, one image (drawn with the seed) is a
validation query and the rest are gallery; the images of a camera where it has one image are
gallery only. So every query has, under the metric's rule that drops same-identity images of
the query's own camera, at least one true match: the gallery images of its other cameras.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

from magnifier.errors import UserError

from .base import ImageRecord, ReIDData, relabel

#: ``dataset.val_split`` values.
VAL_SPLITS = ("holdout", "none")


@dataclass
class HoldoutReport:
    """What the split did, for the start-up summary.

    ``identities``: validation identities taken; ``asked``: how many were asked for;
    ``skipped``: training pids (original, as in file names) that could not validate (one
    camera only, or no camera with two images), kept for training; ``short``: training
    identities left with fewer than ``num_instances`` images (their batches repeat images).
    """

    identities: int = 0
    asked: int = 0
    skipped: list[int] = field(default_factory=list)
    short: list[int] = field(default_factory=list)
    num_instances: int = 4

    def lines(self) -> list[str]:
        out = []
        if self.identities < self.asked:
            out.append(f"  validation: {self.identities} of the {self.asked} identities asked for "
                       "(dataset.val_identities) could validate")
        if self.skipped:
            out.append(f"  validation: {len(self.skipped)} training identities skipped as validation candidates "
                       f"(one camera, or no camera with two images; they stay in training): {_names(self.skipped)}")
        if self.short:
            out.append(f"  train: {len(self.short)} identities have fewer than K={self.num_instances} images "
                       f"(their batches repeat images): {_names(self.short)}")
        return out


def _names(pids: list[int], show: int = 8) -> str:
    head = ", ".join(str(p) for p in pids[:show])
    return head + (f" and {len(pids) - show} more" if len(pids) > show else "")


def validation_count(val_identities: int | float, num_identities: int) -> int:
    """Identities to hold out: a count (whole number >= 1) or a fraction in (0, 1) of the
    ``num_identities`` training identities (rounded, at least 1)."""
    if isinstance(val_identities, bool) or not isinstance(val_identities, (int, float)):
        raise UserError(f"dataset.val_identities={val_identities!r}: give a count (e.g. 100) or a fraction of the "
                        "training identities (e.g. 0.1)")
    if isinstance(val_identities, float) and 0 < val_identities < 1:
        return max(1, round(val_identities * num_identities))
    if float(val_identities).is_integer() and val_identities >= 1:
        return int(val_identities)
    raise UserError(f"dataset.val_identities={val_identities}: give a count >= 1 or a fraction between 0 and 1")


def _query_rows(records: list[ImageRecord], rng: random.Random) -> set[int] | None:
    """Indices (into ``records``, one identity's images) of its validation queries: one image in
    each camera that has two or more; None when the identity cannot validate (fewer than two
    cameras, or no camera with two images)."""
    by_cam: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_cam[r.camid].append(i)
    if len(by_cam) < 2:
        return None
    queries = {rng.choice(rows) for cam, rows in sorted(by_cam.items()) if len(rows) >= 2}
    return queries or None


def hold_out_validation(data: ReIDData, val_identities: int | float, seed: int = 0,
                        num_instances: int = 4) -> HoldoutReport:
    """Move ``val_identities`` training identities of ``data`` into ``data.val_query`` and
    ``data.val_gallery`` (in place); the remaining training pids are relabelled 0..N-1.

    The choice depends only on ``seed`` and the training listing: identities are drawn from
    the sorted candidates, each camera's query from its sorted images. Validation records keep
    their training pid (unique even across combined datasets) and camera.
    """
    rng = random.Random(seed)
    by_pid: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in data.train:
        by_pid[r.pid].append(r)
    pids = sorted(by_pid)
    wanted = validation_count(val_identities, len(pids))
    if wanted >= len(pids):
        raise UserError(f"dataset.val_identities={val_identities} asks for {wanted} of the {len(pids)} training "
                        f"identities of '{data.name}'; leave some to train on, e.g. dataset.val_identities=0.1")
    # Each candidate's query draw comes from its own generator, so that which identities are
    # chosen does not change what any one identity's split would be.
    splits = {pid: _query_rows(sorted(by_pid[pid], key=lambda r: r.path), random.Random(f"{seed}:{pid}"))
              for pid in pids}
    eligible = [pid for pid in pids if splits[pid] is not None]
    skipped = [by_pid[pid][0].original_pid for pid in pids if splits[pid] is None]
    chosen = set(rng.sample(eligible, min(wanted, len(eligible))))
    query, gallery, train = [], [], []
    for pid in pids:
        images = sorted(by_pid[pid], key=lambda r: r.path)
        if pid not in chosen:
            train += images
            continue
        for i, r in enumerate(images):
            # A validation image is an evaluation record: its pid is the identity, not a class.
            (query if i in splits[pid] else gallery).append(replace(r, orig_pid=None, pid=pid))
    data.train = relabel(train)
    data.val_query, data.val_gallery = query, gallery
    counts: dict[int, int] = defaultdict(int)
    for r in data.train:
        counts[r.pid] += 1
    first = {r.pid: r.original_pid for r in data.train}
    short = sorted(first[pid] for pid, n in counts.items() if n < num_instances)
    report = HoldoutReport(identities=len(chosen), asked=wanted, skipped=skipped, short=short,
                           num_instances=num_instances)
    data.val_notes = report.lines()
    return report
