"""``python -m magnifier.train``: fit a ReID model, test the checkpoint chosen on validation, print the table.

The test split is read once, at the end: checkpoints are chosen on the validation split held
out from the training identities (the best ``val/mAP``), or, without one, the final weights
are tested. Nothing that chooses (checkpoint callbacks, early stops, a sweep's objective) may
monitor a ``test/`` metric.

Thin on purpose: every object comes from the Hydra config (``conf/train.yaml``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from magnifier.config import config_dir, describe_run, instantiate_config, register_resolvers, trainer_kwargs  # noqa: E402
from magnifier.errors import UserError, discard_failed_start, exit_on_user_error  # noqa: E402
from magnifier.results import say  # noqa: E402

#: ``float32_matmul_precision`` values (torch.set_float32_matmul_precision's).
MATMUL_PRECISIONS = ("highest", "high", "medium")

log = logging.getLogger("magnifier.train")
register_resolvers()


def _check_logger(cfg: DictConfig) -> None:
    """An online W&B run without credentials would prompt for a key: refuse up front instead."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("offline", True):
        return
    has_key = os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file()
    if not has_key:
        raise UserError(
            "logger.wandb.offline=false (or WANDB_MODE=online) but no W&B credentials were found; "
            "run `wandb login` or set WANDB_API_KEY, or keep the default offline run"
        )


def _check_attributes(cfg: DictConfig, datamodule) -> None:
    """The attribute branch needs an attribute file with as many bits as it predicts."""
    want = int(cfg.model.get("attributes") or 0)
    if not want:
        return
    if not cfg.dataset.get("attributes"):
        raise UserError(
            f"model.attributes={want} needs identity attributes: set dataset.attributes to Lin et al.'s "
            "market_attribute.mat (30 bits) or duke_attribute.mat (23 bits), or model.attributes=0"
        )
    have = datamodule.num_attributes
    if have != want:
        raise UserError(
            f"model.attributes={want} but dataset.attributes={datamodule.attribute_path()} gives {have} bits "
            f"per identity; set model.attributes={have}"
        )


def _init_from(cfg: DictConfig, module, num_classes: int) -> None:
    """Weights (and with ``init_optimizer``, the optimiser's moments) of another run: a second
    training stage or fine-tuning; epochs, schedule and callbacks start fresh."""
    from magnifier.checkpoint import init_network, optimizer_state, read_checkpoint

    module.build(num_classes)
    ckpt = read_checkpoint(cfg.init_from, cfg.get("trust_checkpoint", False))  # once: weights and optimiser
    report = init_network(module.net, cfg.init_from, ckpt=ckpt)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(report, flush=True)
    if cfg.get("init_optimizer", False):
        module.start_optimizer_from(optimizer_state(cfg.init_from, ckpt=ckpt))


def _world_size(kwargs: dict) -> int:
    """Training processes the Trainer arguments ask for (devices x nodes; 1 when unknown)."""
    devices = kwargs.get("devices", 1)
    per_node = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, (list, tuple)) else 1
    return per_node * int(kwargs.get("num_nodes", 1) or 1)


def _resume_checkpoint(cfg: DictConfig) -> tuple[str | None, str]:
    """The checkpoint this run continues from (``ckpt_path``, ``resume``: magnifier.resume)."""
    from magnifier.resume import resolve_checkpoint

    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        pass
    paths = cfg.get("paths") or {}
    task_dir = Path(paths["log_dir"]) / str(cfg.get("task_name", "train")) if paths.get("log_dir") else None
    return resolve_checkpoint(cfg.get("ckpt_path"), cfg.get("resume"), paths.get("output_dir"), task_dir, overrides)


def _loggers(cfg: DictConfig, resume_ckpt: dict | None) -> list:
    """The configured loggers; a resumed run continues its W&B run (same id) when it had one."""
    from hydra.utils import instantiate

    wandb_id = None
    if resume_ckpt is not None:
        from magnifier.resilience import wandb_id_from_checkpoint

        wandb_id = wandb_id_from_checkpoint(resume_ckpt)
    loggers = []
    for name, c in (cfg.get("logger") or {}).items():
        if name == "wandb" and wandb_id:
            loggers.append(instantiate(c, id=wandb_id, resume="allow"))
        else:
            loggers.append(instantiate(c))
    return loggers


#: How the tested checkpoint was chosen (``selected_by`` in metrics.json and the results table):
#: the monitored validation metric of the best-checkpoint callback, or ``last`` (the final weights).
SELECTED_LAST = "last"


def format_results(metrics: dict, checkpoint: str | None, selected_by: str = SELECTED_LAST) -> str:
    """The closing table: rank-1/5/10, mAP, mINP in percent, then the tested checkpoint and how
    it was chosen."""
    from magnifier.module import METRIC_KEYS

    head = " ".join(f"{k:>8}" for k in METRIC_KEYS)
    row = " ".join(f"{100 * float(metrics[k]):8.2f}" if k in metrics else f"{'-':>8}" for k in METRIC_KEYS)
    how = "its best on the validation split" if selected_by != SELECTED_LAST else "the final weights"
    return f"{head}\n{row}\ncheckpoint: {checkpoint or '(the final weights)'} (selected by {selected_by}: {how})"


def _check_selection(cfg: DictConfig) -> None:
    """Nothing that chooses may read the test split: a callback monitoring a ``test/`` metric or
    a sweep optimising one is refused before any data is read. (An Optuna search without a
    validation split is refused before its first run: magnifier.sweeps.unscorable_search.)"""
    metric = str(cfg.get("optimized_metric") or "")
    if metric.startswith("test/"):
        raise UserError(f"optimized_metric={metric}: a sweep must not choose on the test split; use "
                        f"optimized_metric=val/{metric.split('/', 1)[1]} (the held-out validation identities)")
    for name, c in (cfg.get("callbacks") or {}).items():
        monitor = str((c or {}).get("monitor") or "")
        if monitor.startswith("test/"):
            raise UserError(f"callbacks.{name}.monitor={monitor}: checkpoints and early stops must not choose on the "
                            f"test split; monitor val/{monitor.split('/', 1)[1]}")


def _optuna_sweep() -> bool:
    from magnifier.errors import in_multirun

    if not in_multirun():
        return False
    from hydra.core.hydra_config import HydraConfig

    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def _selection_callbacks(callbacks: list, has_validation: bool) -> list:
    """The configured callbacks, without those that choose on a validation metric when there is
    no validation split (the best-checkpoint callback); any other such callback (an early stop)
    cannot work then and is refused."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    if has_validation:
        return callbacks
    kept = []
    for cb in callbacks:
        monitor = str(getattr(cb, "monitor", None) or "")
        if not monitor.startswith("val/"):
            kept.append(cb)
        elif not isinstance(cb, ModelCheckpoint):
            raise UserError(f"{type(cb).__name__} monitors {monitor}, but this run has no validation split "
                            "(dataset.val_split=none); use dataset.val_split=holdout or remove the callback")
    return kept


def _chosen_checkpoint(trainer) -> tuple[str | None, str]:
    """(checkpoint to test, selected_by): the best file of the callback that monitors a
    validation metric, when it saved one; else the final weights, named by the epoch-end
    ``last.ckpt`` when that holds the last step (None: the weights in memory)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    for cb in callbacks:
        if str(cb.monitor or "").startswith("val/") and cb.best_model_path:
            return cb.best_model_path, str(cb.monitor)
    for cb in callbacks:
        if cb.monitor is None and cb.best_model_path and cb._last_global_step_saved == trainer.global_step:
            return cb.best_model_path, SELECTED_LAST
    return None, SELECTED_LAST


def _no_score_reason(cfg: DictConfig, trainer, datamodule, module) -> str:
    """Why a run ends without ``optimized_metric``: one line for the run and its sweep trial."""
    metric = cfg.get("optimized_metric")
    if not datamodule.has_validation:
        why = ("dataset.val_split=none" if datamodule.val_split == "none"
               else "no training identity could validate (each needs two cameras)")
        return f"no {metric}: {why}, so there is no validation split to score on"
    interval = trainer.check_val_every_n_epoch
    if not getattr(module, "validations_run", 0):
        if trainer.limit_val_batches == 0:
            return f"no {metric}: trainer.limit_val_batches=0 runs no validation batch"
        every = f"every {interval} epochs" if interval else f"every {trainer.val_check_interval} steps"
        return (f"no {metric}: the run ended at step {trainer.global_step}, after {trainer.current_epoch} epoch(s), "
                f"before its first validation; validation runs {every}")
    return f"no {metric}: validation ran but gave no {metric} (no validation query had a true match in its gallery)"


def _write_test_report(cfg: DictConfig, module, datamodule, checkpoint: str | None, selected_by: str) -> Path | None:
    """``report.html`` of the final test in the run folder: metrics, CMC, per-query AP, how the
    checkpoint was chosen, and the ranked lists of the worst and best queries (as
    ``python -m magnifier.evaluate`` draws them)."""
    result = getattr(module, "test_result", None)
    output_dir = (cfg.get("paths") or {}).get("output_dir")
    report_cfg = cfg.get("report") or {}
    if not result or not output_dir or not report_cfg.get("enabled", True):
        return None
    from magnifier.evaluation.ranked_lists import draw_ranked_lists, summarize
    from magnifier.evaluation.report import write_report

    per_query = result["per_query"]
    lists = []
    if "features" in result:
        pictures = draw_ranked_lists(
            module.net, datamodule, result, per_query, Path(output_dir) / "ranked_lists",
            worst=int(report_cfg.get("worst", 5)), best=int(report_cfg.get("best", 5)),
            top_k=int(report_cfg.get("top_k", 10)))
        lists = [facts for _, _, facts in pictures]
    how = (f"the best {selected_by} on the validation split" if selected_by != SELECTED_LAST
           else "the last (no validation split chooses)")
    return write_report(output_dir, {"plain": summarize(result)}, {"plain": result["cmc"].tolist()},
                        per_query["ap"], per_query["valid"], lists, dataset=str(cfg.dataset.name),
                        checkpoint=checkpoint or "(the final weights)", num_query=len(per_query["ap"]),
                        num_gallery=int((~result["is_query"]).sum()) if "is_query" in result else None,
                        details={"split": "test (query vs gallery), read once after training",
                                 "checkpoint selected by": f"{selected_by}: {how}", "run folder": output_dir})


def _is_global_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


@exit_on_user_error
def train(cfg: DictConfig) -> dict:
    """Fit and test as the config says; returns the final metrics (``val/...`` and ``test/...``).

    Whatever the outcome, the first process writes ``metrics.json`` (status, metrics, run time)
    into the run folder: the row of this run in a sweep's results table (magnifier.results).
    """
    from magnifier.compilation import compile_options
    from magnifier.results import earlier_runtime_s, write_run_results

    compile_options(cfg.get("compile", False))  # a mistyped mode: one line now, not after the data
    precision = cfg.get("float32_matmul_precision", "high")
    if precision not in MATMUL_PRECISIONS:
        raise UserError(f"float32_matmul_precision={precision}: use {', '.join(MATMUL_PRECISIONS)}")
    if cfg.get("dry_run", False):
        # What the run would use on the machine it is meant for (no GPU check, nothing read).
        print(describe_run(cfg, trainer_kwargs(cfg.trainer, check_devices=False))
              + "\n(dry run: no data read, no run folder kept; drop dry_run=true to train)", flush=True)
        discard_failed_start()  # the run folder Hydra made holds nothing of a run
        return {}
    start, state = time.perf_counter(), {"metrics": {}, "best": None, "tested": None, "selected_by": None}
    output_dir = (cfg.get("paths") or {}).get("output_dir")
    start -= earlier_runtime_s(output_dir) if output_dir else 0.0
    status, error = "failed", None
    try:
        metrics = _train(cfg, state)
        status = "finished"
        return metrics
    except UserError as err:
        error = str(err)
        raise
    except KeyboardInterrupt:
        status, error = "stopped", "interrupted (SIGINT)"
        raise
    except SystemExit as err:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        from magnifier.resilience import SIGTERM_EXIT_CODE

        if not isinstance(err, SIGTERMException):
            raise
        # Lightning stopped at a batch boundary; CheckpointOnSignal saved last.ckpt.
        status, error = "stopped", "SIGTERM"
        sys.exit(SIGTERM_EXIT_CODE)
    except BaseException as err:
        error = f"{type(err).__name__}: {err}".strip().splitlines()[0] if str(err) else type(err).__name__
        raise
    finally:
        if status == "finished" and state.get("no_score") and _optuna_sweep():
            status, error = "failed", state["no_score"]  # a trial without a score
        if output_dir and _is_global_zero():
            write_run_results(output_dir, status, state["metrics"], time.perf_counter() - start, state["best"], error,
                              selected_by=state["selected_by"], tested_checkpoint=state["tested"])


def _index_dataset(dataset: DictConfig):
    """The dataset's file listing (:func:`magnifier.data.datasets.load_dataset`), made before
    Lightning and the data module are imported (about 5 s on two cores), so that a wrong data
    path is refused in seconds. None for the synthetic set, which may still have to be built."""
    if dataset.get("name") == "synthetic" or "root" not in dataset:
        return None
    from omegaconf import OmegaConf

    from magnifier.data.datasets import load_dataset

    options = OmegaConf.to_container(dataset.options, resolve=True) if dataset.get("options") else {}
    return load_dataset(dataset.name, dataset.root, **options)


def _async_checkpoints(value, trainer_kwargs: dict) -> bool:
    """``async_checkpoints``: true, false, or ``auto``: on when training on a GPU. There the host
    has cores to spare beside the training process; on a CPU run every core computes, and a
    background write only slows the steps it overlaps (``benchmarks/checkpoint_save.py``: on 2
    cores the epoch-end save held the loop 0.72 s instead of 1.61 s, but the steps around it
    ran 1.26x slower, about even in all)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() != "auto":
        raise UserError(f"async_checkpoints={value}: use true, false or auto (on when training on a GPU)")
    import torch

    accelerator = str(trainer_kwargs.get("accelerator", "auto")).lower()
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _train(cfg: DictConfig, state: dict) -> dict:
    # The checks up to init_from need torch at most, so Lightning (5 s more to import) comes
    # after them; the GPU check comes before any data is touched.
    kwargs = trainer_kwargs(cfg.trainer)
    if _is_global_zero():
        say(describe_run(cfg, kwargs))
    _check_logger(cfg)
    _check_selection(cfg)
    ckpt_path, why = _resume_checkpoint(cfg)
    if why and _is_global_zero():
        print(why, flush=True)
    resume_ckpt = None
    if ckpt_path:
        from magnifier.checkpoint import read_resume_checkpoint

        # Memory-mapped and checked now, before any logger, loader or run file exists: a broken
        # or foreign file is one line, not Lightning's traceback once the run has started.
        resume_ckpt = read_resume_checkpoint(ckpt_path, cfg.get("trust_checkpoint", False))
    if cfg.get("init_required") and not cfg.get("init_from") and not ckpt_path:
        raise UserError("this recipe continues a previous stage: add init_from=<its checkpoint>, "
                        "e.g. init_from=logs/train/runs/<run>/checkpoints/last.ckpt")
    if cfg.get("init_from") and not Path(cfg.init_from).is_file():
        raise UserError(f"init_from={cfg.init_from}: no such checkpoint file (the weights to start from, "
                        "e.g. stage 1's .../checkpoints/last.ckpt)")
    import torch

    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "high"))  # CUDA only
    indexed = _index_dataset(cfg.dataset)
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from magnifier.data.dataset import LabelMapError
    from magnifier.distributed import close_process_group
    from magnifier.module import ReIDModule
    from magnifier.resilience import AtomicCheckpointIO

    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_config(cfg.dataset)
    # Data problems surface before any logger or run folder is created. Only the first process
    # builds a missing synthetic dataset; DDP workers are launched after this point.
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        datamodule.prepare_data()
        say(datamodule.load(indexed).summary())
    else:
        datamodule.load(indexed)
    _check_attributes(cfg, datamodule)
    if cfg.get("train", True):
        datamodule.check_sampling(_world_size(kwargs))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        # Unreadable images and unusable label maps, before any logger or loader exists.
        datamodule.check_files("fit" if cfg.get("train", True) else "test")
    from magnifier.loggers import run_config

    container = run_config(cfg)  # resolved, without Hydra's own node
    data = {k: container["dataset"].get(k) for k in ("height", "width", "mean", "std")}
    module = ReIDModule(
        net=container["model"], loss=container["loss"], optim=container["optim"],
        channels_last=cfg.get("channels_last", False), data=data, compile=container.get("compile", False),
    )
    if cfg.get("init_from") and not ckpt_path:  # a resume restores everything itself
        _init_from(cfg, module, datamodule.num_classes)
    if resume_ckpt is not None:
        from magnifier.checkpoint import check_resume_fits

        module.build(datamodule.num_classes)
        check_resume_fits(module.net, ckpt_path, resume_ckpt)
    callbacks = _selection_callbacks([instantiate(c) for c in (cfg.get("callbacks") or {}).values()],
                                     datamodule.has_validation)
    loggers = _loggers(cfg, resume_ckpt)
    del resume_ckpt  # Lightning reads the file itself
    # Checkpoint files are replaced atomically: a kill while saving never breaks last.ckpt; and
    # (async_checkpoints) written by a thread from a host copy while training goes on.
    checkpoint_io = AtomicCheckpointIO(background=_async_checkpoints(cfg.get("async_checkpoints", "auto"), kwargs))
    trainer = pl.Trainer(**kwargs, callbacks=callbacks, logger=loggers or False, plugins=[checkpoint_io])
    for logger in loggers:
        logger.log_hyperparams(container)

    weights_only = not cfg.get("trust_checkpoint", False)
    try:
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        # Chosen without the test split: the best validation checkpoint, else the final weights.
        tested, selected_by = _chosen_checkpoint(trainer)
        state.update(metrics=metrics, best=tested if selected_by != SELECTED_LAST else None,
                     tested=tested, selected_by=selected_by)
        optimized = cfg.get("optimized_metric")
        if optimized and optimized not in metrics and cfg.get("train", True):
            state["no_score"] = _no_score_reason(cfg, trainer, datamodule, module)
            if trainer.is_global_zero and (datamodule.has_validation or _optuna_sweep()):
                say(state["no_score"] + ("; the final weights are tested" if cfg.get("test", True) else ""))
        if cfg.get("test", True) and not kwargs.get("fast_dev_run"):
            trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False, weights_only=weights_only)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            state["report"] = (_write_test_report(cfg, module, datamodule, tested, selected_by)
                               if trainer.is_global_zero else None)
    except LabelMapError as err:
        # Raised in a loader worker, the message carries the worker's traceback: keep its last line.
        raise UserError(str(err).strip().splitlines()[-1].split("LabelMapError: ")[-1]) from None
    finally:
        from magnifier.loggers import finish_wandb  # Lightning is imported after Hydra's logging set-up

        finish_wandb(loggers)
    if trainer.is_global_zero:
        split = "test" if any(k.startswith("test/") for k in metrics) else "val"
        shown = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(split + "/")}
        say(f"\n{cfg.dataset.name} query/gallery ({split}, %):\n" + format_results(shown, state["tested"], selected_by))
        warning = getattr(datamodule.load(), "camera_warning", None)
        if warning:  # printed at the start too; beside the table, where the numbers are read
            say(warning)
        if state.get("report"):
            say(f"report: {state['report']}")
    # A DDP run closes its process group here, not at interpreter exit, where Gloo's threads
    # can abort the process (SIGABRT) after a run that succeeded: see magnifier.distributed.
    close_process_group()
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return value


if __name__ == "__main__":
    from magnifier.cli import run_entry_point

    run_entry_point(main, "train")
