"""User-facing errors: one clear line and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import functools
import sys
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


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point so a :class:`UserError` prints ``error: ...`` and exits with code 2.

    Anything else is a bug and keeps its traceback. Inside a Hydra multirun the error line is
    printed and the exception raised on, so that Hydra marks this one run failed (and the Optuna
    sweeper records a failed trial) while the sweep goes on.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            if in_multirun():
                raise
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapper  # type: ignore[return-value]
