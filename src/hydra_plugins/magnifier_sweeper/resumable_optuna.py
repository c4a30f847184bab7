"""``hydra.sweeper._target_`` of ``hparams_search=optuna``; the logic is in magnifier.sweeps."""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's OptunaSweeper whose ``n_trials`` counts the trials already in the stored study, so
    that rerunning a stopped sweep (same ``hydra.sweep.dir``) only runs the trials still to go."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from magnifier.sweeps import resumable_optuna_impl

        self.sweeper = resumable_optuna_impl(**kwargs)
