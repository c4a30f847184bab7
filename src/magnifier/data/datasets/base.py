"""Dataset records: what every ReID dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class ImageRecord:
    """One image of one person.

    ``pid`` is the identity (relabelled 0..N-1 in the training split, original in query and
    gallery; 0 marks a Market-1501 distractor), ``camid`` is 0-based, ``mask_path`` is the
    part label map of this image when one exists. ``orig_pid`` keeps the file name's pid of a
    relabelled training record (None when ``pid`` is already the original), e.g. to look up
    identity-level attributes.
    """

    path: str
    pid: int
    camid: int
    mask_path: str | None = None
    orig_pid: int | None = None

    @property
    def original_pid(self) -> int:
        """The identity as the dataset's file names give it."""
        return self.pid if self.orig_pid is None else self.orig_pid


@dataclass
class ReIDData:
    """The splits of a ReID dataset: ``train``, ``query`` and ``gallery`` (the test split), and
    ``val_query`` and ``val_gallery``, a validation split held out from the training identities
    (empty unless :func:`~magnifier.data.datasets.holdout.hold_out_validation` made one).

    ``camera_names`` maps each 0-based query/gallery ``camid`` to the camera as the dataset
    names it (Market's ``0195_c3s1_...`` is camid 2, named ``"3"``), for pictures and messages;
    a camid the dataset gave no name (a CSV row without one) is absent. ``camera_warning`` is a
    one-line ``warning: ...`` when the query/gallery cameras are unknown, so that the
    cross-camera protocol cannot be followed; None when they are known.
    """

    name: str
    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)
    camera_names: dict[int, str] = field(default_factory=dict)
    camera_warning: str | None = None
    val_query: list[ImageRecord] = field(default_factory=list)
    val_gallery: list[ImageRecord] = field(default_factory=list)
    #: Lines about the validation split for the summary (identities skipped, short ones).
    val_notes: list[str] = field(default_factory=list)

    @property
    def cameras_known(self) -> bool:
        """Whether every query and gallery image has its real camera (the protocol holds)."""
        return self.camera_warning is None

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    def summary(self) -> str:
        """A table of ids / images / cameras per split, printed at set-up; with a validation
        split, its rows and a line naming the split that chooses checkpoints."""
        lines = [
            f"dataset {self.name} ({self.root})",
            f"  {'split':<12} {'ids':>7} {'images':>8} {'cameras':>8}",
        ]
        rows = [("train", self.train)]
        if self.val_query:
            rows += [("val query", self.val_query), ("val gallery", self.val_gallery)]
        rows += [("query", self.query), ("gallery", self.gallery)]
        for split, recs in rows:
            ids = len({r.pid for r in recs})
            cams = len({r.camid for r in recs})
            lines.append(f"  {split:<12} {ids:>7} {len(recs):>8} {cams:>8}")
        if self.val_query:
            lines.append(f"  validation: held out from training ({len({r.pid for r in self.val_query})} identities, "
                         f"{len(self.val_query) + len(self.val_gallery)} images); checkpoints are chosen on it, "
                         "the test split (query, gallery) is used once at the end")
        lines += self.val_notes
        if self.camera_warning:
            lines.append(self.camera_warning)
        return "\n".join(lines)


def relabel(records: list[ImageRecord]) -> list[ImageRecord]:
    """Map training pids onto 0..N-1 (in sorted pid order) so they index the classifier; the
    original pid stays in ``orig_pid``."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid], orig_pid=r.original_pid) for r in records]


def names_counted_from_one(records: list[ImageRecord]) -> dict[int, str]:
    """``camid -> name`` for readers whose file names number cameras from 1 (``c3``, MSMT17's
    ``_03_``) and store ``camid = number - 1``: the name is that number again."""
    return {camid: str(camid + 1) for camid in sorted({r.camid for r in records})}


def find_dataset_dir(root: str | Path, official_names: tuple[str, ...]) -> Path:
    """``root`` may be the dataset folder itself or a parent holding it under an official name."""
    root = Path(root).expanduser()
    for name in official_names:
        if (root / name).is_dir():
            return root / name
    return root


#: Folder of a dataset's part label maps, beside its image folders.
MASK_DIR = "masks"


def mask_target(root: str | Path, image: str | Path) -> Path:
    """Where the readers look for ``image``'s label map: ``<root>/masks/<image path below root,
    .png>``, or ``<root>/masks/<file name>.png`` for an image outside ``root`` (a CSV's absolute
    path). Every reader (Market layout, MSMT17, folder, CSV) mirrors its images this way, so
    ``python -m magnifier.parse`` writes each map where training will find it."""
    root, image = Path(root), Path(image)
    rel = image.relative_to(root) if image.is_relative_to(root) else Path(image.name)
    return root / MASK_DIR / rel.with_suffix(".png")


def find_mask(root: str | Path, image: str | Path) -> str | None:
    """``image``'s label map under ``<root>/masks/`` (:func:`mask_target`, or the same path with
    ``.npy``), or None when there is none."""
    target = mask_target(root, image)
    for candidate in (target, target.with_suffix(".npy")):
        if candidate.is_file():
            return str(candidate)
    return None
