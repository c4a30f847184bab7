"""``python -m magnifier.parse``: 8-part label maps from raw person images, offline.

    python -m magnifier.parse dataset=duke              # the training split of DukeMTMC-reID
    python -m magnifier.parse dataset=market split=all  # query and gallery too
    python -m magnifier.parse input=crops/ output=maps/ # a plain folder of images
    python -m magnifier.parse dataset=market backend=import import.source=schp_out import.scheme=lip

Maps go where training reads them (``<dataset folder>/masks/<image path>.png``, see
:func:`magnifier.data.datasets.base.mask_target`), so ``python -m magnifier.train dataset=duke``
follows directly. See ``conf/parse.yaml`` for every option and :mod:`magnifier.parsers` for the
backends.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from magnifier.config import config_dir, instantiate_config, register_resolvers  # noqa: E402
from magnifier.errors import UserError, exit_on_user_error  # noqa: E402

register_resolvers()

SPLITS = {"train": ("train",), "all": ("train", "query", "gallery")}


def folder_jobs(input_dir: str, output_dir: str | None):
    """Every image under ``input_dir`` (recursively, sorted) -> ``<output_dir>/<same path>.png``."""
    from magnifier.data.datasets.market import IMAGE_SUFFIXES  # what the dataset readers index
    from magnifier.parsers.runner import Job

    src = Path(input_dir).expanduser()
    if not src.is_dir():
        raise UserError(f"input={input_dir}: no such folder")
    if not output_dir:
        raise UserError("input= needs output=<folder for the maps> (they mirror the input tree)")
    out = Path(output_dir).expanduser()
    if out.resolve() == src.resolve():
        raise UserError(f"output={output_dir} is the input folder; give the maps their own folder")
    images = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and out not in p.parents)
    if not images:
        raise UserError(f"input={input_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [Job(str(p), str(out / p.relative_to(src).with_suffix(".png"))) for p in images], out, src


def dataset_jobs(cfg: DictConfig):
    """The chosen splits of ``cfg.dataset`` -> its mask folder (or ``output=``)."""

    from magnifier.data.datasets import load_dataset
    from magnifier.data.datasets.base import MASK_DIR, mask_target
    from magnifier.parsers.runner import Job

    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split!r}: use train or all")
    datamodule = instantiate_config(cfg.dataset)
    datamodule.prepare_data()  # builds the synthetic set if asked for and missing
    data = load_dataset(datamodule.name, datamodule.root, **datamodule.options)
    root = Path(data.root)
    mask_root = Path(cfg.output).expanduser() if cfg.output else root / MASK_DIR
    seen, jobs = set(), []
    for split in SPLITS[cfg.split]:
        for rec in getattr(data, split):
            if rec.path in seen:
                continue
            seen.add(rec.path)
            target = mask_target(root, rec.path)
            jobs.append(Job(rec.path, str(mask_root / target.relative_to(root / MASK_DIR))))
    return jobs, mask_root, root


@exit_on_user_error
def parse(cfg: DictConfig):
    """Run the parser the config asks for; returns the :class:`~magnifier.parsers.runner.Summary`."""
    from magnifier.parsers import check_backend
    from magnifier.parsers.preview import write_preview
    from magnifier.parsers.runner import run

    check_backend(cfg.backend)  # before any dataset is read
    if cfg.input:
        jobs, out_dir, images_root = folder_jobs(cfg.input, cfg.output)
        what = f"{cfg.input}"
    else:
        jobs, out_dir, images_root = dataset_jobs(cfg)
        what = f"dataset {cfg.dataset.name} ({cfg.split} split{'s' if cfg.split == 'all' else ''})"
    if cfg.limit:
        jobs = jobs[: int(cfg.limit)]
    kwargs = dict(OmegaConf.to_container(cfg.get(cfg.backend) or {}, resolve=True))
    if cfg.backend == "import":
        kwargs["images_root"] = str(images_root)
    if cfg.workers is not None and int(cfg.workers) < 1:
        raise UserError(f"workers={cfg.workers}: use a number of processes >= 1 (null: one per core)")
    print(f"parsing {len(jobs)} images of {what} with backend={cfg.backend}; maps in {out_dir}", flush=True)
    summary = run(jobs, cfg.backend, kwargs, out_dir, workers=cfg.workers, overwrite=bool(cfg.overwrite))
    for line in summary.lines():
        print(line, flush=True)
    if summary.unreadable:
        print(f"unreadable images are listed in {out_dir / 'unreadable.txt'}", flush=True)
    if summary.no_person:
        print(f"images without a person found (all-background maps) are listed in {out_dir / 'no_person.txt'}; "
              "train with masks.empty=stripes to give them stripe pseudo-parts instead", flush=True)
    if summary.interrupted:
        print("interrupted: every finished map is kept; run the same command again to continue", file=sys.stderr)
        sys.exit(130)
    if cfg.preview:
        pairs = [(j.image, j.target) for j in jobs if os.path.exists(j.target)][: int(cfg.preview)]
        if pairs:
            print(f"preview: {write_preview(pairs, out_dir / 'preview.png')}", flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="parse")
def main(cfg: DictConfig) -> None:
    parse(cfg)


if __name__ == "__main__":
    from magnifier.cli import run_entry_point

    run_entry_point(main, "parse")
