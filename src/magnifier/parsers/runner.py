"""Run a part parser over many images: worker processes, resumable, one summary at the end.

Each map is written to ``<target>.part`` and renamed when complete, so an interrupted run
(Ctrl-C, a killed job) leaves only whole maps behind and loses at most the images in flight; a
second run skips every map that exists (unless ``overwrite``); SIGTERM (a cluster ending the
job) stops a run like Ctrl-C. Unreadable images and images
without a person are listed in ``unreadable.txt`` and ``no_person.txt`` beside the maps (an
image without a person still gets an all-background map: training can treat those as missing
with ``masks.empty=stripes``); the lists accumulate over resumed runs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from magnifier.data.files import BadFileError, read_image
from magnifier.parts import NUM_PARTS, PART_NAMES

from . import build_parser

UNREADABLE_LIST = "unreadable.txt"
NO_PERSON_LIST = "no_person.txt"
SUMMARY_FILE = "parse_summary.json"


@dataclass(frozen=True)
class Job:
    """One image to parse and the path its 8-part map goes to."""

    image: str
    target: str


@dataclass
class Summary:
    """What a run did. ``part_area`` is each part's mean share of the image's pixels over the
    parsed images with a person (index = EANet label, 0 = background)."""

    total: int = 0
    parsed: int = 0
    skipped: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    no_person: list[str] = field(default_factory=list)
    part_area: list[float] = field(default_factory=lambda: [0.0] * NUM_PARTS)
    seconds: float = 0.0
    interrupted: bool = False

    def lines(self) -> list[str]:
        rate = self.parsed / self.seconds if self.seconds > 0 else 0.0
        with_person = self.parsed - len(self.no_person)
        area = ", ".join(f"{PART_NAMES[i]} {100 * a:.1f}%" for i, a in enumerate(self.part_area) if i)
        out = [
            f"images: {self.total}; parsed {self.parsed}, skipped (map exists) {self.skipped}, "
            f"unreadable {len(self.unreadable)}, no person found {len(self.no_person)}",
            f"time: {self.seconds:.1f} s ({rate:.1f} images/s)",
        ]
        if with_person > 0:
            out.append(f"mean part area (share of the image, {with_person} images with a person): {area}")
        return out


def _worker_init(backend: str, kwargs: dict) -> None:
    # Ctrl-C is the main process's to handle (it stops the pool): workers ignore it rather than
    # each printing a traceback. One parser per process: interpreters are not shared or pickled.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _PARSER
    _PARSER = build_parser(backend, **kwargs)


def _write_png(labels: np.ndarray, target: str) -> None:
    """Write atomically: a crash mid-write leaves ``<target>.part``, never a truncated map."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    Image.fromarray(labels.astype(np.uint8)).save(part, format="PNG")  # uint8 (H, W): mode L
    os.replace(part, path)


def parse_one(job: Job, parser=None) -> tuple[str, str, list[float] | None]:
    """Parse ``job.image`` and write its map: ``(status, detail, part areas)`` with status
    ``parsed``, ``no_person`` or ``unreadable`` (detail says why)."""
    parser = parser or _PARSER
    try:
        image = read_image(job.image)
    except BadFileError as err:
        return "unreadable", str(err).replace("\n", " "), None
    try:
        result = parser.parse(image, source=job.image)
    except (FileNotFoundError, ValueError) as err:  # e.g. backend=import without a source map
        return "unreadable", str(err).replace("\n", " "), None
    labels = result.labels
    if labels.shape != image.shape[:2]:
        raise RuntimeError(f"{parser.name} returned a {labels.shape} map for a {image.shape[:2]} image")
    _write_png(labels, job.target)
    if not result.person_found:
        return "no_person", f"score {result.score:.3f}", None
    areas = np.bincount(labels.reshape(-1), minlength=NUM_PARTS)[:NUM_PARTS] / labels.size
    return "parsed", "", areas.tolist()


def _merge_list(path: Path, entries: list[str], redone: set[str]) -> None:
    """Update the list file at ``path`` (one image per line, ``image[\tdetail]``, sorted): the
    lines of images parsed again in this run (``redone``) are replaced by ``entries``."""
    old = path.read_text().splitlines() if path.is_file() else []
    new = sorted({line for line in old if line.split("\t")[0] not in redone} | set(entries))
    if new != old:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{e}\n" for e in new))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(jobs: list[Job], backend: str, backend_kwargs: dict, out_dir: str | Path, *,
        workers: int | None = None, overwrite: bool = False, progress: bool = True) -> Summary:
    """Parse every job whose map is missing (all of them with ``overwrite``), in ``workers``
    processes (1: in this process), and write the lists and ``parse_summary.json`` into
    ``out_dir``. Ctrl-C stops the workers, keeps every finished map and returns the summary so
    far with ``interrupted=True``."""
    out_dir = Path(out_dir)
    summary = Summary(total=len(jobs))
    todo = [j for j in jobs if overwrite or not os.path.exists(j.target)]
    summary.skipped = len(jobs) - len(todo)
    workers = max(1, min(int(workers or default_workers()), len(todo) or 1))
    # Built here first even with worker processes: a bad setting or a missing model file is one
    # clear error now, not a pool that keeps restarting workers whose set-up fails.
    parser = build_parser(backend, **backend_kwargs) if todo else None
    area_sum = np.zeros(NUM_PARTS)
    start = time.perf_counter()
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"parsing ({backend}, {workers} worker{'s' * (workers > 1)})",
                   smoothing=0.05, dynamic_ncols=True)

    done: set[str] = set()

    def record(job: Job, outcome: tuple[str, str, list[float] | None]) -> None:
        status, detail, areas = outcome
        done.add(job.image)
        if status == "unreadable":
            summary.unreadable.append((job.image, detail))
        else:
            summary.parsed += 1
            if status == "no_person":
                summary.no_person.append(job.image)
            else:
                area_sum[:] += areas
        if bar is not None:
            bar.update(1)

    pool = None
    # A cluster stops a job with SIGTERM: treat it like Ctrl-C, so the lists and the summary of
    # what was done are still written (the maps in flight are .part files, redone next time).
    def on_term(signum, frame):
        raise KeyboardInterrupt

    watch_term = _main_thread()  # signal handlers can only be set from the main thread
    previous_term = signal.signal(signal.SIGTERM, on_term) if watch_term else None
    try:
        if workers == 1:
            for job in todo:
                record(job, parse_one(job, parser))
        else:
            # spawn: fresh interpreters, so nothing of this process's threads (torch, Hydra) is
            # inherited; each builds its own parser once.
            pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(backend, backend_kwargs))
            chunk = max(1, min(16, len(todo) // (workers * 8)))
            for job, outcome in zip(todo, pool.imap(parse_one, todo, chunksize=chunk)):
                record(job, outcome)
            pool.close()
            pool.join()
    except KeyboardInterrupt:
        summary.interrupted = True
        if pool is not None:
            pool.terminate()
            pool.join()
    finally:
        if watch_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_term is None else previous_term)
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - start
        with_person = summary.parsed - len(summary.no_person)
        if with_person:
            summary.part_area = (area_sum / with_person).tolist()
        _merge_list(out_dir / UNREADABLE_LIST, [f"{img}\t{why}" for img, why in summary.unreadable], done)
        _merge_list(out_dir / NO_PERSON_LIST, summary.no_person, done)
        if todo:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / SUMMARY_FILE).write_text(json.dumps({
                "total": summary.total, "parsed": summary.parsed, "skipped": summary.skipped,
                "unreadable": len(summary.unreadable), "no_person": len(summary.no_person),
                "part_area": dict(zip(PART_NAMES, summary.part_area)), "seconds": summary.seconds,
                "interrupted": summary.interrupted, "backend": backend,
            }, indent=2))
    return summary
