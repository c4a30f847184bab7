"""Logger adapters."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger

log = logging.getLogger("magnifier.loggers")


def _hydra_job() -> Any:
    """Hydra's config of the running job, or None outside a Hydra app (a plain script)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run_identity(task: str | None, hydra_job: Any = None) -> dict[str, Any]:
    """W&B ``group``, ``job_type`` and ``name`` of a run, from Hydra's view of the job.

    - group: under a multirun (``-m``, any launcher or sweeper), ``<task>-<sweep folder name>``,
      e.g. ``train-2024-05-01_12-00-00``: the same for every run of the sweep, one per sweep folder
      (where its runs are written), readable in the group list, and without a "/" (group names
      go into W&B's page addresses); None otherwise.
    - job_type: when training, the model choice (``model=baseline`` gives ``baseline``; an
      experiment preset gives the model it selects); for other tasks, the task (``evaluate``),
      since their network comes from a checkpoint, not from the model group.
    - name: in a sweep, ``<job_type>-<job number>`` (``baseline-0``); otherwise None (W&B's own).
    """
    from hydra.types import RunMode

    job = hydra_job if hydra_job is not None else _hydra_job()
    if job is None:
        return {"group": None, "job_type": task, "name": None}
    task = task or job.job.name
    choices = job.runtime.choices
    job_type = (choices.get("model") if task == "train" else None) or task
    if job.mode != RunMode.MULTIRUN:
        return {"group": None, "job_type": job_type, "name": None}
    return {"group": f"{task}-{Path(str(job.sweep.dir)).name}", "job_type": job_type,
            "name": f"{job_type}-{job.job.num}"}


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger, set up for sweeps and offline runs.

    - ``group``/``job_type``/``name`` left None are derived from the Hydra job (:func:`run_identity`):
      the runs of one multirun share a group named after the sweep, job type = model.
    - The config goes up flat (``optim/optimizer/lr``, ``model/backbone/name``), one column per key in the
      runs table, so that it can be filtered and grouped on.
    - ``log_model=true`` uploads the best checkpoint (the callbacks that monitor a metric,
      ``val/mAP``) when fit ends, also offline: the artifact is recorded in the run and goes
      up with ``wandb sync``. ``log_model=all`` uploads every checkpoint saved, last.ckpt included.
    - Lightning always passes ``anonymous``, which makes wandb >= 0.19 warn on every run; it is
      dropped. Offline runs need no account.
    """

    def __init__(self, *args, task: str | None = None, offline: bool = False, **kwargs):
        derived = run_identity(task)
        for key, value in derived.items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        # Lightning refuses log_model offline, although an offline run records artifacts and
        # `wandb sync` uploads them: ask wandb itself for an offline run instead.
        super().__init__(*args, offline=False, **kwargs)
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.pop("anonymous", None)

    def log_hyperparams(self, params) -> None:
        from lightning_fabric.utilities.logger import _convert_params, _flatten_dict

        # {"optim": {"lr": 3e-4}} -> {"optim/lr": 3e-4}: "/" as in the metric names; a "." would
        # read as nesting in W&B's run filters. Lists of numbers stay values.
        super().log_hyperparams(_flatten_dict(_convert_params(params), delimiter="/"))

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # With log_model=true only the best checkpoint goes up: a callback without a metric
        # (last.ckpt) would otherwise take the artifact's "best" alias.
        if self._log_model is True and getattr(checkpoint_callback, "monitor", None) is None:
            return
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            # Lightning uploads the file now (else at finalize): it must be written, not still in
            # the background writer.
            from magnifier.resilience import wait_for_checkpoint_writes

            wait_for_checkpoint_writes()
        super().after_save_checkpoint(checkpoint_callback)

    def finalize(self, status: str) -> None:
        if self._log_model:  # log_model=true uploads the best checkpoint here
            from magnifier.resilience import wait_for_checkpoint_writes

            wait_for_checkpoint_writes()
        super().finalize(status)


def run_config(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run's resolved config for the loggers: plain containers, without Hydra's own node
    (present when composed in tests) and without the top-level keys in ``drop``."""
    from omegaconf import OmegaConf

    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra" and k not in drop}


def write_run_files(files_dir: Path, config: dict[str, Any], summary: dict[str, Any]) -> list[Path]:
    """Write ``config.yaml`` and ``wandb-summary.json`` into a W&B run's ``files/`` folder
    where wandb did not; returns the files written.

    Online, wandb-core writes both when the run finishes; offline it writes neither, so an
    offline run could only be read by decoding its ``.wandb`` file. They are written in
    wandb's own formats, so that a later ``wandb sync`` finds what an online run has: YAML
    ``{key: {value: ...}}`` (the ``_wandb`` entry holds the versions), keys sorted, 4-space
    indent, as wandb-core's ``runconfig.Serialize``; and the summary as one JSON object.
    """
    import platform

    import wandb
    import yaml

    written = []
    config_file = files_dir / "config.yaml"
    if not config_file.exists():
        internal = {"cli_version": wandb.__version__, "python_version": platform.python_version()}
        # Through JSON: the values as wandb stores them (plain lists, numbers, strings).
        values = json.loads(json.dumps({"_wandb": internal, **config}, default=str))
        config_file.write_text(yaml.safe_dump({k: {"value": v} for k, v in values.items()},
                                              indent=4, sort_keys=True, allow_unicode=True))
        written.append(config_file)
    summary_file = files_dir / "wandb-summary.json"
    if not summary_file.exists():
        # Nested entries (an image, a table) are mappings of wandb's own: dict() unwraps them.
        summary_file.write_text(json.dumps(summary, default=dict, sort_keys=True))
        written.append(summary_file)
    return written


def finish_wandb(loggers: list) -> None:
    """Close the W&B run so an offline run directory is complete and ready for `wandb sync`,
    with its config and summary in ``files/`` (:func:`write_run_files`)."""
    from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger  # also our base

    if any(isinstance(lg, LightningWandbLogger) for lg in loggers):
        import wandb

        run = wandb.run
        if run is not None:
            # Read before finish(): afterwards the run no longer answers (its summary is empty).
            files_dir = Path(run.dir).resolve()
            try:
                contents = run.config.as_dict(), dict(run.summary)
            except Exception as err:  # wandb's service gone (a crashed run): still finish it
                contents = None
                log.warning("W&B run config and summary not readable: %s", err)
            wandb.finish()
            try:
                if contents is not None:
                    write_run_files(files_dir, *contents)
            except OSError as err:  # the run itself is complete: a warning, not a failed run
                log.warning("W&B run files not written into %s: %s", files_dir, err)
