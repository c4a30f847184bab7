"""When validation runs: every ``trainer.check_val_every_n_epoch`` epochs, and at the run's last step."""

from __future__ import annotations

import pytorch_lightning as pl


class ValidateLastEpoch(pl.Callback):
    """Validate at the step where training ends, whatever ``check_val_every_n_epoch`` says.

    Lightning validates only when the epoch number is a multiple of the interval, so a run that
    stops elsewhere would end without a validation, hence without a checkpoint chosen on it
    (and a sweep trial without a score). Three ends are covered:

    - the last epoch of ``max_epochs`` (``trainer.max_epochs=1`` under a recipe that validates
      every 10): the interval is 1 for that epoch;
    - the step that reaches ``max_steps``, mid-epoch or not;
    - a stop asked for with ``trainer.should_stop`` (a callback such as EarlyStopping, or the
      user's), which Lightning honours at the next step.

    For the last two the callback sets ``should_stop`` (the run ends there anyway) and the
    interval to 1, and Lightning's epoch loop then validates at that step before it stops. The
    interval is put back when fitting ends. A SIGTERM is not validated: its grace period goes to
    saving ``last.ckpt`` (CheckpointOnSignal), and the resumed run validates at its own end.
    Without a validation loader (``dataset.val_split=none``) nothing changes.
    """

    def __init__(self) -> None:
        self._interval: int | None = None

    def _validate_now(self, trainer: pl.Trainer) -> None:
        interval = trainer.check_val_every_n_epoch
        if interval is not None and interval > 1:
            if self._interval is None:
                self._interval = interval
            trainer.check_val_every_n_epoch = 1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch == trainer.max_epochs - 1
        if last:
            self._validate_now(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        at_max_steps = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        if not (at_max_steps or trainer.should_stop) or trainer.received_sigterm:
            return
        # The epoch loop validates at a step where should_stop is set and the interval allows it
        # (pytorch_lightning.loops.training_epoch_loop._should_check_val_fx), then stops.
        trainer.should_stop = True
        self._validate_now(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._interval is not None:
            trainer.check_val_every_n_epoch, self._interval = self._interval, None
