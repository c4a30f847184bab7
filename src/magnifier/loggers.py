"""Logger adapters."""

from __future__ import annotations

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger without the deprecated ``anonymous`` init argument.

    Lightning always passes ``anonymous``, which makes wandb >= 0.19 print a warning on every
    run; dropping it keeps the console to what matters. Offline runs need no account.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)


def finish_wandb(loggers: list) -> None:
    """Close the W&B run so an offline run directory is complete and ready for `wandb sync`."""
    from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger  # also our base

    if any(isinstance(lg, LightningWandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
