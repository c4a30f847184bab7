"""User-facing errors: one clear line and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

#: Exit code for a user error (bad config, missing data, too few GPUs).
USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix (what was wrong, where, how to fix it), shown as one line."""


def in_multirun() -> bool:
    """Whether this process runs one job of a Hydra multirun (``-m``, any launcher or sweeper)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def discard_failed_start() -> Path | None:
    """Remove the run folder of a run that failed its start-up checks; returns it if removed.

    Hydra makes the folder (its ``.hydra/`` config and the job's log) before the entry point
    runs, so every mistyped command would leave an empty run behind. A folder holding anything
    else (a checkpoint, a logger's files: a run that got going, or an earlier run resumed in
    place) is kept. Runs of a multirun are kept too: the sweep's results table lists them.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return None
    if not HydraConfig.initialized() or in_multirun():
        return None
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    made_by_start = {str(hydra_cfg.output_subdir or ".hydra"), f"{hydra_cfg.job.name}.log", "metrics.json"}
    if not folder.is_dir() or any(entry.name not in made_by_start for entry in folder.iterdir()):
        return None
    cwd = Path.cwd().resolve()
    if folder.resolve() in (cwd, *cwd.parents):  # hydra.run.dir=. : never the folder the user works in
        return None
    shutil.rmtree(folder, ignore_errors=True)
    # Hydra made the <task>/runs/ folders above it too: remove them if nothing else is there.
    for parent in list(folder.parents)[:2]:
        try:
            parent.rmdir()
        except OSError:  # not empty (other runs), or not ours to remove
            break
    return folder


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point so a :class:`UserError` prints ``error: ...`` and exits with code 2.

    Anything else is a bug and keeps its traceback. Inside a Hydra multirun the error line is
    printed and the exception raised on, so that Hydra marks this one run failed (and the Optuna
    sweeper records a failed trial) while the sweep goes on. A single run that failed before it
    wrote anything of its own leaves no run folder behind (:func:`discard_failed_start`).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            if in_multirun():
                raise
            discard_failed_start()
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper  # type: ignore[return-value]
