"""The LightningModule: wires config to model, losses and metric; training and evaluation steps."""

from __future__ import annotations

import bisect
import logging
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

log = logging.getLogger(__name__)

# Under DDP, Lightning shards the evaluation loaders with a DistributedSampler, which pads the
# last ranks with repeated samples, and advises evaluating on one device. ReIDMetric keeps one
# row per dataset index after gathering (tested against one process), so the advice does not
# apply here and would only worry the reader.
warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders\. During `trainer\.(test|validate)\(\)`")

#: Metric names logged under ``val/`` and ``test/``.
METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


#: When the per-epoch scheduler steps: ``start`` (the authors' code steps it as each epoch starts,
#: so 0-based epoch e trains at the multiplier of e + 1: the first epoch at 0.109x with a 10-epoch
#: warm-up from 0.01, the decay at milestone 40 already in epoch 39), ``end`` (PyTorch's and
#: Lightning's order: epoch e at the multiplier of e, the first epoch at 0.01x).
SCHEDULER_STEP_AT = {"start": 1, "end": 0}


def schedule_epoch(epoch: int, step_at: str = "start", start_epoch: int = 0) -> int:
    """The epoch whose multiplier 0-based training epoch ``epoch`` uses; ``start_epoch`` shifts
    the whole schedule (a second stage continuing where the first one stopped)."""
    if step_at not in SCHEDULER_STEP_AT:
        raise ValueError(f"optim.scheduler.step_at must be one of {', '.join(SCHEDULER_STEP_AT)}, got {step_at!r}")
    return epoch + start_epoch + SCHEDULER_STEP_AT[step_at]


def warmup_multistep(epoch: int, warmup_epochs: int, warmup_factor: float, milestones: list[int], gamma: float) -> float:
    """lr multiplier at ``epoch``: linear warm-up from ``warmup_factor`` to 1, then x``gamma`` at each milestone."""
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        return warmup_factor * (1 - alpha) + alpha
    return gamma ** bisect.bisect_right(list(milestones), epoch)


def linear_scaled_lr(base_lr: float, global_batch: int, reference_batch: Any) -> float:
    """The linear scaling rule (Goyal et al., 2017): ``base_lr`` was tuned for
    ``reference_batch`` images a step; a step of ``global_batch`` images (every process's batch
    together) takes ``base_lr * global_batch / reference_batch``."""
    from magnifier.errors import UserError

    if isinstance(reference_batch, bool) or not isinstance(reference_batch, (int, float)) or reference_batch <= 0:
        raise UserError(f"optim.scale_lr=true needs optim.reference_batch > 0 (the batch base lr was tuned for, "
                        f"64 in the paper), got {reference_batch!r}")
    return base_lr * global_batch / reference_batch


#: ``optim.implementation`` values: how the optimiser updates its parameters.
OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "default")


def optimizer_implementation(choice: str, params: list[torch.Tensor]) -> str:
    """``fused``, ``foreach`` or ``default`` (PyTorch's own choice) for ``optim.implementation``.

    ``auto``: the fused kernel when every parameter is on a CUDA device (one kernel for the whole
    update instead of a few per parameter group; docs/gpu_speed.md has the measured rows),
    ``foreach`` otherwise (the CPU).
    """
    if choice not in OPTIMIZER_IMPLEMENTATIONS:
        from magnifier.errors import UserError

        raise UserError(f"optim.implementation={choice}: use one of {', '.join(OPTIMIZER_IMPLEMENTATIONS)}")
    if choice != "auto":
        return choice
    return "fused" if params and all(p.is_cuda for p in params) else "foreach"


class ReIDModule(pl.LightningModule):
    """Trains a ReID network with a composite loss and evaluates query-vs-gallery retrieval.

    Args:
        net: the model's config (``_target_`` plus constructor arguments, without
            ``num_classes``); built in :meth:`setup` once the data module knows the number of
            training identities, or at once when ``num_classes`` is given (loading a checkpoint).
        loss: the composite loss's config (``_target_`` and weights).
        optim: ``optimizer`` (an optimizer config with ``_partial_: true``) and ``scheduler``
            (``warmup_epochs``, ``warmup_factor``, ``milestones``, ``gamma``; stepped per epoch;
            optional ``step_at`` = start | end, see :data:`SCHEDULER_STEP_AT`, and
            ``start_epoch``, the schedule's epoch at which this run begins).
        num_classes: training identities, saved with the checkpoint.
        channels_last: NHWC memory layout for the network and its inputs (faster convolutions
            on recent GPUs and CPUs with mixed precision).
        data: the input the network was trained on (``height``, ``width``, ``mean``, ``std``),
            saved with the checkpoint for evaluation and export.
        compile: torch.compile the network and the loss for fitting (``true``, a mode name or a
            mapping of torch.compile's arguments, see :func:`magnifier.compilation.compile_options`);
            the graph breaks are reported after the first training step. A checkpoint loaded
            for evaluation or export runs eager.
    """

    def __init__(
        self,
        net: dict,
        loss: dict,
        optim: dict,
        num_classes: int | None = None,
        channels_last: bool = False,
        data: dict | None = None,
        compile: Any = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net: torch.nn.Module | None = None
        self.criterion = instantiate(loss)
        from magnifier.evaluation import ReIDMetric

        self.val_metric = ReIDMetric()
        # The final test keeps its features for the ranked lists of the run's report.html.
        self.test_metric = ReIDMetric(keep_features=True)
        self.validations_run = 0  # validation epochs of this process's fit (not the sanity check)
        self._initial_optimizer_state: dict | None = None
        from magnifier.compilation import RecompileWatch, compile_options

        self._compile = compile_options(compile)  # a bad value fails here, before any step
        self._compiled, self._breaks_before = False, None
        self.recompiles = RecompileWatch()  # training steps after the first that compiled again
        from magnifier.monitor import WindowSum

        self._window = WindowSum()  # the training values since the last logging step
        if num_classes is not None:
            self.build(num_classes)

    def build(self, num_classes: int) -> None:
        """Build the network for ``num_classes`` identities (done in :meth:`setup` otherwise)."""
        self.hparams.num_classes = num_classes
        self.net = instantiate(self.hparams.net, num_classes=num_classes)
        if self.hparams.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def setup(self, stage: str) -> None:
        if self.net is None:
            datamodule = self.trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "num_classes"):
                raise RuntimeError("ReIDModule needs num_classes or a data module that provides it")
            self.build(datamodule.num_classes)
        if stage == "fit" and self._compile is not None and not self._compiled:
            from magnifier.compilation import compile_in_place, graph_breaks

            compile_in_place(self.net, self._compile)
            compile_in_place(self.criterion, self._compile)
            self._compiled, self._breaks_before = True, graph_breaks()

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None):
        return self.net(images, masks)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.net(self._images(batch), batch.get("mask"))
        terms = self.criterion(outputs, batch["pid"], batch.get("attributes"))
        self.last_terms = terms  # read by StopOnNonFiniteLoss to name a term that turned NaN
        values = dict(terms)
        values["id_acc"] = (outputs["global_logits"].argmax(1) == batch["pid"]).float().mean()
        if "replaced" in batch:  # images that could not be decoded and were swapped for the same identity
            values["bad_images"] = batch["replaced"].sum()
        self._log_window(values, batch["image"].shape[0], batch_idx)
        return terms["loss"]

    def _log_window(self, values: dict[str, torch.Tensor], n: int, batch_idx: int) -> None:
        """``train/<name>``: each value's mean over the steps since it was last logged
        (``bad_images``: their sum). Logged at the steps Lightning writes (every
        ``trainer.log_every_n_steps``), and at the end of each epoch and of the run so that
        ``trainer.callback_metrics`` (the run's metrics.json) always holds them; summed on the
        device in between (monitor.WindowSum); a resumed run's first window holds the steps since
        the resume. Not ``prog_bar``, which Lightning would read back every step
        (monitor.ProgressBar shows them)."""
        self._window.add(values)
        trainer = self._trainer
        if trainer is not None and not (
            trainer._logger_connector.should_update_logs or trainer.fast_dev_run
            or batch_idx + 1 == trainer.num_training_batches
            or 0 <= trainer.max_steps <= trainer.global_step + 1
        ):
            return
        sums, steps = self._window.pop()
        for name, total in sums.items():
            self.log(f"train/{name}", total if name == "bad_images" else total / steps, batch_size=n)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._compiled and self._breaks_before is None:
            self.recompiles.start()  # compilations within this step are recompiles

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self._compiled:
            return
        from magnifier.results import say

        if self._breaks_before is not None:
            # The first step has traced and compiled the network and the loss: report its breaks.
            from magnifier.compilation import describe_graph_breaks, graph_breaks

            breaks = graph_breaks() - self._breaks_before
            self._breaks_before = None
            if self.trainer.is_global_zero:
                say(describe_graph_breaks(breaks))
            return
        new = self.recompiles.stop()  # the random SRB regions, for one, must not cause any
        if new and self.trainer.is_global_zero:
            from magnifier.compilation import describe_recompile

            say(describe_recompile(self.trainer.global_step, new, self.recompiles.total))

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_step(self, metric, batch: dict[str, Any]) -> None:
        features = self.net(self._images(batch), batch.get("mask"))
        if self._compiled:
            # With CUDA graphs (compile=reduce-overhead, or cudagraphs in the options) an output
            # lives in the graph's memory pool, which the next batch's replay overwrites; the
            # metric keeps every batch's features until the epoch ends, so it gets its own copy.
            features = features.clone()
        metric.update(features, batch["pid"], batch["camid"], batch["is_query"], batch["index"])

    def _eval_epoch_end(self, metric, prefix: str) -> None:
        try:
            results = metric.compute()
        except ValueError as err:  # e.g. a limited batch count left no query with a true match
            log.warning("%s metrics skipped: %s", prefix, err)
            metric.reset()
            return
        for key in METRIC_KEYS:
            # Every rank computed the same value from the gathered features. The max over ranks
            # is that value exactly (a mean could round), and syncing at all keeps Lightning from
            # advising sync_dist=True for each key under DDP: one scalar all-reduce per epoch.
            self.log(f"{prefix}/{key}", results[key], prog_bar=key in ("rank1", "mAP"), sync_dist=True, reduce_fx="max")
        metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(self.val_metric, batch)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations_run += 1
        self._eval_epoch_end(self.val_metric, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(self.test_metric, batch)

    def on_test_epoch_end(self) -> None:
        self.test_metric.last_result = None
        self._eval_epoch_end(self.test_metric, "test")
        # CMC and per-query AP of the final test, for the run's report.html (magnifier.train).
        self.test_result = self.test_metric.last_result

    # -- optimisation -------------------------------------------------------------------------
    def start_optimizer_from(self, state: dict) -> None:
        """Start training with another run's optimiser state (Adam's moments and step counts),
        as the authors' second stage does; the learning rate stays this run's schedule."""
        self._initial_optimizer_state = state

    def on_train_start(self) -> None:
        state, self._initial_optimizer_state = self._initial_optimizer_state, None
        if state is None:
            return
        from magnifier.errors import UserError

        optimizer = self.trainer.optimizers[0]
        current = optimizer.state_dict()
        own_ids = [i for g in current["param_groups"] for i in g["params"]]
        saved_ids = [i for g in state["param_groups"] for i in g["params"]]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if len(own_ids) != len(saved_ids):
            raise UserError(f"init_optimizer=true: the checkpoint's optimiser holds {len(saved_ids)} parameters, "
                            f"this model trains {len(own_ids)}; use init_optimizer=false")
        moved = {}
        for own, saved, param in zip(own_ids, saved_ids, params):
            entry = state["state"].get(saved)
            if entry is None:
                continue
            for value in entry.values():
                if torch.is_tensor(value) and value.dim() and tuple(value.shape) != tuple(param.shape):
                    raise UserError(f"init_optimizer=true: the checkpoint's optimiser state has shape "
                                    f"{tuple(value.shape)} where this model has {tuple(param.shape)}; "
                                    "use init_optimizer=false")
            moved[own] = entry
        # Only the per-parameter state is taken: lr, weight decay and initial_lr stay this run's.
        current["state"] = moved
        optimizer.load_state_dict(current)
        log.info("optimiser state taken from init_from (%d of %d parameters)", len(moved), len(own_ids))

    def configure_optimizers(self):
        optim = self.hparams.optim
        params = [p for p in self.parameters() if p.requires_grad]
        kind = optimizer_implementation(optim.get("implementation", "auto"), params)
        extra = {kind: True} if kind in ("fused", "foreach") else {}
        optimizer = instantiate(optim["optimizer"])(params=params, **extra)
        if optim.get("scale_lr", False):
            self._scale_lr(optimizer, optim.get("reference_batch"))
        sched = dict(optim["scheduler"])
        step_at, start_epoch = sched.get("step_at", "end"), int(sched.get("start_epoch", 0))
        schedule_epoch(0, step_at, start_epoch)  # a bad step_at fails here, not mid-epoch
        lr_lambda = lambda epoch: warmup_multistep(  # noqa: E731
            schedule_epoch(epoch, step_at, start_epoch),
            sched["warmup_epochs"], sched["warmup_factor"], list(sched["milestones"]), sched["gamma"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _scale_lr(self, optimizer: torch.optim.Optimizer, reference_batch: Any) -> None:
        """``optim.scale_lr``: every parameter group's lr times global batch / reference batch
        (:func:`linear_scaled_lr`), before the scheduler records it as its base; logged once."""
        from magnifier.errors import UserError

        datamodule = self.trainer.datamodule
        if getattr(datamodule, "batch_size", None) is None:
            raise UserError("optim.scale_lr=true needs a data module with a batch_size (dataset.batch_size)")
        global_batch = int(datamodule.batch_size) * self.trainer.world_size
        base_lr = optimizer.param_groups[0]["lr"]
        lr = linear_scaled_lr(base_lr, global_batch, reference_batch)
        for group in optimizer.param_groups:
            group["lr"] = linear_scaled_lr(group["lr"], global_batch, reference_batch)
        log.info("optim.scale_lr: base lr %g x global batch %d (%d per process x %d processes) / reference batch %s "
                 "= lr %g", base_lr, global_batch, datamodule.batch_size, self.trainer.world_size, reference_batch, lr)
        for logger in self.trainer.loggers:
            logger.log_hyperparams({"optim/effective_lr": lr, "optim/global_batch": global_batch})
