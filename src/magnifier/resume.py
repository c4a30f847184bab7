"""Which checkpoint a run continues from: ``ckpt_path=<file>``, ``ckpt_path=last``, ``resume=``.

* ``resume=own`` (default): continue from ``last.ckpt`` in this run's own folder if there is one.
  A fresh run's folder is new and empty, so this only acts when a run is started again in the
  same folder: a SLURM job requeued by the submitit launcher, or a fixed ``hydra.run.dir``.
* ``resume=auto``: as ``own``, else the newest ``last.ckpt`` of an earlier run of the same
  config (same command-line overrides, apart from ``resume``/``ckpt_path``/``hydra.*``) under
  ``${paths.log_dir}/${task_name}``, runs and multirun jobs alike; nothing found: a fresh start.
* ``resume=never``: always start fresh (unless ``ckpt_path`` is given).
* ``ckpt_path=last``: the checkpoint ``resume=auto`` would pick, and an error if there is none.
"""

from __future__ import annotations

from pathlib import Path

from magnifier.errors import UserError

RESUME_MODES = ("own", "auto", "never")
#: Overrides that do not make a run a different experiment.
_IGNORED_PREFIXES = ("resume=", "ckpt_path=", "hydra.", "hydra/", "+hydra.", "~hydra.")


def _key_overrides(overrides) -> list[str]:
    return sorted(str(o) for o in overrides if not str(o).lstrip("+~").startswith(_IGNORED_PREFIXES))


def _read_overrides(run_dir: Path) -> list[str] | None:
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def same_config_checkpoints(task_dir: Path, overrides, exclude: Path | None = None) -> list[Path]:
    """``last.ckpt`` of every run under ``task_dir`` started with the same overrides, newest first."""
    want = _key_overrides(overrides)
    found = []
    for ckpt in list(task_dir.glob("runs/*/checkpoints/last.ckpt")) + list(task_dir.glob("multiruns/*/*/checkpoints/last.ckpt")):
        run_dir = ckpt.parent.parent
        if exclude is not None and run_dir.resolve() == exclude.resolve():
            continue
        theirs = _read_overrides(run_dir)
        if theirs is not None and _key_overrides(theirs) == want:
            found.append(ckpt)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_checkpoint(ckpt_path: str | None, resume: str | None, output_dir: str | Path | None,
                       task_dir: str | Path | None, overrides) -> tuple[str | None, str]:
    """The checkpoint to continue from (or None) and one line saying why.

    Args:
        ckpt_path: the ``ckpt_path`` key (a file, ``last`` or None).
        resume: the ``resume`` key (one of :data:`RESUME_MODES`).
        output_dir: this run's folder.
        task_dir: ``${paths.log_dir}/${task_name}``, where earlier runs live.
        overrides: this run's command-line overrides (Hydra's ``overrides.task``).
    """
    resume = resume or "own"
    if resume not in RESUME_MODES:
        raise UserError(f"resume={resume}: use one of {', '.join(RESUME_MODES)}")
    own = Path(output_dir) / "checkpoints" / "last.ckpt" if output_dir else None
    if ckpt_path and ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return str(ckpt_path), f"resuming from {ckpt_path}"
    if ckpt_path == "last" or resume == "auto":
        if own is not None and own.is_file():
            return str(own), f"resuming this run from {own}"
        earlier = same_config_checkpoints(Path(task_dir), overrides, exclude=Path(output_dir) if output_dir else None) \
            if task_dir and Path(task_dir).is_dir() else []
        if earlier:
            return str(earlier[0]), f"resuming the newest run of the same config from {earlier[0]}"
        if ckpt_path == "last":
            raise UserError(f"ckpt_path=last: no earlier run of this config with a last.ckpt under {task_dir}; "
                            "give the file (ckpt_path=<run>/checkpoints/last.ckpt) or start without ckpt_path")
        return None, "resume=auto: no earlier run of this config to continue; starting fresh"
    if resume == "own" and own is not None and own.is_file():
        return str(own), f"resuming this run from {own} (started again in its own folder)"
    return None, ""
