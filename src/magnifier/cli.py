"""Running a Hydra entry point so that a config mistake is one line and exit code 2.

Hydra reports a bad override (``foo=1``, ``trainer.max_epoch=2``, ``dataset=marker``) in several
lines ending with a hint about ``HYDRA_FULL_ERROR`` and exits with code 1, as it would for a
crash. :func:`run_entry_point` runs the ``@hydra.main`` function with Hydra's reporting turned
off, so the exception reaches it, and turns config mistakes into ``error: <one line>`` with
the nearest valid name where one exists. ``HYDRA_FULL_ERROR=1`` set by the user keeps Hydra's
own full text; any other exception (a bug) keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from magnifier.config import config_dir
from magnifier.errors import USER_ERROR_EXIT_CODE

#: Set by :func:`run_entry_point` for itself and the processes it starts (DDP ranks inherit the
#: environment), so that its own HYDRA_FULL_ERROR=1 is not taken for the user's.
_COMPACT_ENV = "MAGNIFIER_COMPACT_ERRORS"


def _hydra_overrides(argv: list[str]) -> list[str]:
    """The overrides of a command line, parsed by Hydra's own argument parser (flags dropped)."""
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:  # a malformed flag; Hydra reports it itself
        return []
    return list(args.overrides or [])


def _flat_keys(node, prefix: str = "") -> list[str]:
    """Every key path of a config (``trainer.max_epochs``, ...), containers included."""
    from omegaconf import OmegaConf

    keys = []
    if OmegaConf.is_dict(node):
        for k in node.keys():
            path = f"{prefix}{k}"
            keys.append(path)
            child = node._get_node(k)
            if OmegaConf.is_dict(child):
                keys += _flat_keys(child, path + ".")
    return keys


def _group_options(group: str, root: Path | None = None) -> list[str]:
    """The options of a config group: the ``.yaml`` files of ``conf/<group>/``."""
    folder = (root or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _is_group(key: str, root: Path | None = None) -> bool:
    return ((root or config_dir()) / key.lstrip("+~")).is_dir()


def _compose_keys(config_name: str, overrides: Iterable[str]) -> list[str]:
    """The keys of the config the user's group choices compose (the defaults if that fails too)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups = [o for o in overrides if "=" in o and _is_group(o.split("=", 1)[0])]
    for attempt in (groups, []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                return _flat_keys(compose(config_name, overrides=attempt))
        except Exception:  # noqa: BLE001 - a second bad override: fall back to the defaults
            continue
        finally:
            GlobalHydra.instance().clear()
    return []


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a misspelt ``name`` (None when nothing is close).

    Among dotted keys, those under the same parent (``trainer.``) are tried first, so that
    ``trainer.max_epoch`` finds ``trainer.max_epochs`` rather than a look-alike elsewhere.
    """
    candidates = list(candidates)
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    pools = [[c for c in candidates if parent and c.startswith(parent)], candidates]
    for pool in pools:
        found = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
        if found:
            return found[0]
    return None


def config_error_line(err: BaseException, config_name: str, overrides: list[str]) -> str | None:
    """One line for a config mistake Hydra or OmegaConf raised; None for anything else.

    Covered: an unknown key (``foo=1``), a group option that does not exist
    (``dataset=marker``), an override Hydra cannot parse, a second value for a group
    (``+dataset=market``), and interpolation or mandatory-value errors of the composed config.
    """
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    text = str(err).strip() or str(err.__cause__ or "").strip()  # some carry the message in their cause
    first = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = list(err.options or _group_options(group))
        if not group:
            return f"{first}; check --config-name"
        guess = nearest(option, options)
        hint = f"did you mean {group}={guess}? " if guess else ""
        noun = group.replace("/", " ")
        return f"{group}={option}: no such {noun}; {hint}options: {', '.join(options)}"
    if isinstance(err, OverrideParseException):
        # Hydra's text: the override, the grammar's complaint, a link; keep the complaint.
        detail = next((s.strip() for s in text.splitlines()
                       if s.strip() and not s.startswith(("Error parsing override", "See https"))), "")
        return (f"cannot read the override {err.override!r}" + (f" ({detail})" if detail else "")
                + "; write key=value, group=option, +new_key=value or ~key")
    if isinstance(err, ConfigCompositionException):
        if first.startswith("Could not override '"):
            key = first[len("Could not override '"):].split("'", 1)[0]
            given = next((o for o in overrides if o.split("=", 1)[0].lstrip("~") == key), key)
            guess = nearest(key, _compose_keys(config_name, overrides))
            hint = f"did you mean {guess}? " if guess else ""
            return (f"{given}: the config has no key {key}; {hint}"
                    f"see every key with --cfg job, or add a new one with +{given.lstrip('~')}")
        if first.startswith("Multiple values for "):
            group = first[len("Multiple values for "):].split(".", 1)[0]
            return f"{group} is chosen already: override it with {group}=<option>, not +{group}=<option>"
        return first + "  (HYDRA_FULL_ERROR=1 shows Hydra's full text)"
    if isinstance(err, (InterpolationResolutionError, MissingMandatoryValue)):
        key = getattr(err, "full_key", None)
        where = f"{key}: " if key else ""
        return f"{where}{first}; set it on the command line ({key or 'key'}=...) or fix the config"
    return None


def run_entry_point(main: Callable[[], object], config_name: str, argv: list[str] | None = None) -> None:
    """Run a ``@hydra.main`` function; a config mistake exits with one line and code 2."""
    if not config_dir().is_dir():
        print(f"error: Hydra configs not found in {config_dir()}; set MAGNIFIER_CONFIG_DIR", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    if os.environ.get("HYDRA_FULL_ERROR") and not os.environ.get(_COMPACT_ENV):
        main()  # the user asked for Hydra's own reports
        return
    # With HYDRA_FULL_ERROR set, Hydra raises instead of printing its multi-line report.
    os.environ[_COMPACT_ENV] = os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as err:  # noqa: BLE001 - classified below; anything else is re-raised
        line = config_error_line(err, config_name, _hydra_overrides(sys.argv[1:] if argv is None else argv))
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)
