"""Sweeps: Hydra's Optuna sweeper with a study that survives the sweep, and sweep keys checked
before any run starts.

``hparams_search=optuna`` (conf/hparams_search/optuna.yaml) searches with Hydra's Optuna sweeper
and keeps the study in ``<sweep folder>/optuna.db``. :func:`resumable_optuna_impl` adds only
what resuming needs: rerun the same command with ``hydra.sweep.dir=<that folder>`` and it counts
the trials already finished (a trial left running by a killed sweep is marked failed), runs
only the ones still to go, and numbers the new run folders after the existing ones. The search
itself (sampler, trials, study) is Optuna's. A trial whose run ends without the optimised metric
(the run prints why) is recorded by Optuna as failed; a sweep in which no trial produced a value
ends with one line, the results table written, and exit code 2 (:func:`no_value_line`).

:class:`SweepKeysCallback` refuses, in one line and with exit code 2, a sweep over a key the
config does not have (a typo would otherwise fail every run, or silently add a key), or an
Optuna search with ``dataset.val_split=none`` (no split to score trials on), before the first
run starts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from magnifier.errors import USER_ERROR_EXIT_CODE

log = logging.getLogger(__name__)

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


def _sqlite_path(storage: Any) -> Path | None:
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///"):])
    return None


def resume_study(storage: Any, study_name: str | None) -> int:
    """The number of trials a stored study already holds (0 if none); stale running trials
    become failed, so that every trial counted is finished.

    A sweep that was killed leaves its running trials RUNNING forever; no process will report
    them, so they are closed as FAIL (they count as finished: their runs were lost).
    """
    import optuna

    path = _sqlite_path(storage)
    if storage is None or (path is not None and not path.is_file()):
        return 0
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # the storage exists but holds no such study
        return 0
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study._storage.set_trial_state(trial._trial_id, optuna.trial.TrialState.FAIL)
    if running:
        log.warning("optuna: %d trial(s) left running by an earlier sweep marked failed", len(running))
    return len(study.get_trials(deepcopy=False))


def no_value_line(storage: Any, study_name: str | None, sweep_dir: str | Path, reason: str = "") -> str | None:
    """The closing line of a sweep in which no trial was scored, or None when one was."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return f"error: the sweep ran no trial{reason}"
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return None
    return (f"error: no trial of the sweep produced a value ({len(trials)} trial(s), all failed{reason}); "
            f"each run folder's metrics.json names why; results table: {Path(sweep_dir) / 'results.md'}")


def resumable_optuna_impl(**kwargs: Any):
    """Hydra's OptunaSweeperImpl, resuming the stored study (used by the plugin class
    ``hydra_plugins.magnifier_sweeper.resumable_optuna.ResumableOptunaSweeper``; Hydra loads
    sweepers only from the ``hydra_plugins`` package). Imported lazily: optuna is slow to import."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    # Optuna's SQLite storage runs alembic, whose INFO lines would flood Hydra's console log.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
        def sweep(self, arguments: list[str]) -> None:
            path = _sqlite_path(self.storage)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            done = resume_study(self.storage, self.study_name)
            if done:
                log.info("optuna: study %r has %d trial(s); running %d more", self.study_name, done,
                         max(self.n_trials - done, 0))
                # A sampler seeded as before would propose the first sweep's points again.
                if hasattr(self.sampler, "reseed_rng"):
                    self.sampler.reseed_rng()
            self.n_trials = max(self.n_trials - done, 0)
            self.job_idx = max(self.job_idx, done)  # run folder i holds trial i
            try:
                super().sweep(arguments)
            except Exception as err:  # noqa: BLE001 - only a sweep with no scored trial ends here
                # Optuna's best_trial has no record to give, or the failure rate stopped the
                # sweep by re-raising a trial's error: one line instead of a traceback.
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                reason = "" if "Record does not exist" in first else f"; the last error: {first}"
                line = no_value_line(self.storage, self.study_name, self.config.hydra.sweep.dir, reason)
                if line is None:
                    raise
                from magnifier.results import write_table

                sweep_dir = Path(str(self.config.hydra.sweep.dir))
                if sweep_dir.is_dir():
                    write_table(sweep_dir)
                print(line, file=sys.stderr, flush=True)
                sys.exit(USER_ERROR_EXIT_CODE)

    return ResumableOptunaSweeperImpl(**kwargs)


# -- sweep keys --------------------------------------------------------------------------------
def _sweep_keys(config: DictConfig) -> list[tuple[str, str]]:
    """(key, where) for every swept key: command-line sweeps and the Optuna search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    for override in parsed:
        if override.is_sweep_override() and not override.is_add() and not override.is_force_add():
            keys.append((override.key_or_group, "sweep"))
    params = OmegaConf.select(config, "hydra.sweeper.params")
    if params:
        keys += [(str(k), "hydra.sweeper.params") for k in params]
    return keys


def unknown_sweep_key(config: DictConfig) -> str | None:
    """The first swept key that is neither a config key nor a config group, as an error line."""
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    for key, where in _sweep_keys(config):
        if key in choices or OmegaConf.select(config, key, default="__missing__") != "__missing__":
            continue
        head = key.rsplit(".", 1)[0] if "." in key else ""
        hint = f"; keys under {head}: {', '.join(map(str, OmegaConf.select(config, head).keys()))}" \
            if head and OmegaConf.is_dict(OmegaConf.select(config, head)) else ""
        origin = "the Optuna search space (hydra.sweeper.params)" if where != "sweep" else "the sweep"
        return f"{origin} names {key}, which the config does not have{hint} (to add a new key, write +{key}=...)"
    return None


def unscorable_search(config: DictConfig) -> str | None:
    """An Optuna search with no validation split to score its trials on, as an error line."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if "optuna" not in target.lower() or OmegaConf.select(config, "dataset.val_split", default="holdout") != "none":
        return None
    metric = OmegaConf.select(config, "optimized_metric", default="val/mAP")
    return (f"hparams_search=optuna maximises {metric}, but dataset.val_split=none leaves no validation split to "
            "score trials on; use dataset.val_split=holdout")


class SweepKeysCallback(_HydraCallback):
    """Hydra callback: a multirun over unknown keys stops before its first run (exit code 2)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = unknown_sweep_key(config) or unscorable_search(config)
        if problem:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT_CODE)
