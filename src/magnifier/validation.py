"""When validation runs: every ``trainer.check_val_every_n_epoch`` epochs and after the last one."""

from __future__ import annotations

import pytorch_lightning as pl


class ValidateLastEpoch(pl.Callback):
    """Validate after the last epoch too, whatever ``check_val_every_n_epoch`` says.

    Lightning validates only when the epoch number is a multiple of the interval, so a run of
    ``max_epochs`` that is not one (``trainer.max_epochs=1`` under a recipe that validates every
    10) would end without a validation, hence without a best checkpoint to test or export. The
    interval is set to 1 for the last epoch only (and put back when fitting ends).
    """

    def __init__(self) -> None:
        self._interval: int | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch == trainer.max_epochs - 1
        interval = trainer.check_val_every_n_epoch
        if last and interval is not None and interval > 1:
            self._interval = interval
            trainer.check_val_every_n_epoch = 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._interval is not None:
            trainer.check_val_every_n_epoch, self._interval = self._interval, None
