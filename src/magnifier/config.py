"""Where the Hydra configs live, the resolvers they use, and config-to-Lightning mappings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from magnifier.cluster import check_num_nodes
from magnifier.errors import UserError


def config_dir() -> Path:
    """The ``conf/`` folder: ``$MAGNIFIER_CONFIG_DIR``, else the checkout this package runs from."""
    env = os.environ.get("MAGNIFIER_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "conf"


def project_root() -> Path:
    """The folder that holds ``conf/`` (the repository root for an editable install)."""
    return config_dir().parent


def _wandb_offline() -> bool:
    # W&B stays offline unless the user asks for it with WANDB_MODE=online (or logger.offline=false).
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def log_interval(gpus, accelerator) -> int:
    """``trainer.log_every_n_steps`` by device: 50 on GPUs, where reading logged values every step
    would stall the device with a synchronisation each step; 1 on the CPU."""
    on_gpu = int(gpus or 0) != 0 or str(accelerator).lower() in ("gpu", "cuda")
    return 50 if on_gpu else 1


def cudnn_benchmark(deterministic) -> bool:
    """``trainer.benchmark`` (``torch.backends.cudnn.benchmark``) unless ``trainer.deterministic``
    is set: cuDNN times its convolution algorithms on the first batch of each input shape and
    keeps the fastest. Training shapes never change here (fixed-size crops, ``drop_last``), and
    the authors' code (reid-strong-baseline's ``tools/train.py``) switches it on too. With
    ``deterministic`` it stays off, as the autotuner may pick other algorithms run to run."""
    return not deterministic


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity: a SLURM or container allotment)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(wanted, gpus=0) -> int:
    """``dataset.num_workers`` sized to the machine: ``wanted``, but no more than the usable cores
    shared among this node's training processes (one per GPU with ``trainer.gpus``). More workers
    than cores only compete with the training process (and PyTorch warns about it)."""
    processes = int(gpus) if gpus and int(gpus) > 0 else 1
    return max(0, min(int(wanted), usable_cores() // processes))


def register_resolvers() -> None:
    """``${magnifier_root:}``, ``${wandb_offline:}``, ``${log_interval:gpus,accelerator}``,
    ``${cudnn_benchmark:deterministic}``, ``${loader_workers:wanted,gpus}``,
    ``${slurm_tasks:N}`` and ``${slurm_gpus:N}`` (the SLURM launcher's geometry from
    ``trainer.gpus``) in the configs."""
    if not OmegaConf.has_resolver("magnifier_root"):
        OmegaConf.register_new_resolver("magnifier_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", _wandb_offline)
    if not OmegaConf.has_resolver("log_interval"):
        OmegaConf.register_new_resolver("log_interval", log_interval)
    if not OmegaConf.has_resolver("cudnn_benchmark"):
        OmegaConf.register_new_resolver("cudnn_benchmark", cudnn_benchmark)
    if not OmegaConf.has_resolver("loader_workers"):
        OmegaConf.register_new_resolver("loader_workers", loader_workers)
    if not OmegaConf.has_resolver("slurm_tasks"):
        from magnifier.cluster import slurm_gpus_per_node, slurm_tasks_per_node

        OmegaConf.register_new_resolver("slurm_tasks", slurm_tasks_per_node)
        OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus_per_node)


def compose_config(config_name: str = "train", overrides: list[str] | None = None,
                   output_dir: str | Path | None = None) -> DictConfig:
    """``conf/<config_name>.yaml`` composed as ``python -m magnifier.<config_name>`` composes it,
    for notebooks and scripts: the same groups, overrides and resolvers, and Hydra's own node,
    so that ``magnifier.train.train(cfg)`` or ``magnifier.evaluate.evaluate(cfg)`` run as the
    command would, writing into ``output_dir`` (the run folder the command would make).

    Example: ``train(compose_config("train", ["model=sab", "trainer.max_epochs=2"], "runs/a"))``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides or []), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} and the job name resolve
    return cfg


def instantiate_config(node, **kwargs):
    """``hydra.utils.instantiate``, with a constructor's one-line :class:`UserError` raised as is:
    Hydra wraps whatever a target raises in an InstantiationException with a traceback."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def trainer_kwargs(trainer_cfg: DictConfig | dict, cuda_device_count=_cuda_device_count,
                   environ: Mapping[str, str] | None = None, check_devices: bool = True) -> dict[str, Any]:
    """Map the ``trainer`` config onto ``pytorch_lightning.Trainer`` arguments.

    ``gpus`` is the Lightning-1 style switch users know (``trainer.gpus=4``): 0 or null leaves
    ``accelerator``/``devices`` as configured; N > 0 means accelerator gpu with N devices and,
    for N > 1, the DDP strategy with synchronised batch norm; -1 means every visible GPU. It is
    checked against the visible CUDA devices before anything else runs, and ``num_nodes > 1``
    against the launch environment (``environ``, default ``os.environ``): see
    :func:`magnifier.cluster.check_num_nodes`. ``check_devices=False`` maps without either
    check: what a run would use on the machine it is meant for (``dry_run=true``).
    """
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else dict(trainer_cfg)
    cfg.pop("_target_", None)
    gpus = cfg.pop("gpus", None)
    if gpus in (None, 0):
        if check_devices:
            check_num_nodes(cfg.get("num_nodes"), cfg.get("devices"), environ)
        return cfg
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < -1:
        raise UserError(f"trainer.gpus={gpus} is not a GPU count; use an integer N >= 1, -1 for all GPUs, or 0")
    # Without the check (dry_run): the machine the run is meant for has the GPUs it asks for;
    # -1 stays -1 (Lightning's "every visible GPU"), shown with the DDP settings of several.
    visible = cuda_device_count() if check_devices else max(gpus, 1)
    if gpus == -1 and not check_devices:
        visible = -1
    elif gpus == -1:
        if visible == 0:
            raise UserError("trainer.gpus=-1 but 0 CUDA devices are visible; use trainer.gpus=0 to train on the CPU")
        gpus = visible
    if visible < gpus:
        raise UserError(
            f"trainer.gpus={gpus} but {visible} CUDA devices are visible; "
            f"use trainer.gpus={visible} or check CUDA_VISIBLE_DEVICES"
        )
    cfg["accelerator"] = "gpu"
    cfg["devices"] = gpus
    if gpus > 1 or gpus == -1:
        if cfg.get("strategy", "auto") == "auto":
            cfg["strategy"] = "ddp"
        cfg["sync_batchnorm"] = True
    if check_devices:
        check_num_nodes(cfg.get("num_nodes"), gpus, environ)
    return cfg


def _compile_setting(value: Any) -> str:
    if hasattr(value, "items"):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def describe_run(cfg: DictConfig, kwargs: dict[str, Any]) -> str:
    """What a run really uses, resolved: the Trainer's device settings after the ``gpus``
    mapping, and the folders (``--cfg job`` shows ``gpus: 4`` beside ``devices: 1`` and paths
    as ``${...}``). Printed at the start of every training run and by ``dry_run=true``."""
    paths = cfg.get("paths") or {}
    dataset = cfg.get("dataset") or {}
    devices = kwargs.get("devices", 1)
    accelerator = str(kwargs.get("accelerator", "auto"))
    if accelerator == "auto":  # Lightning's choice: a GPU when one is visible
        import torch

        accelerator += " (gpu here)" if torch.cuda.is_available() else " (cpu here)"
    trainer = (f"accelerator={accelerator} devices={devices} "
               f"num_nodes={kwargs.get('num_nodes', 1)} strategy={kwargs.get('strategy', 'auto')} "
               f"sync_batchnorm={str(bool(kwargs.get('sync_batchnorm', False))).lower()} "
               f"precision={kwargs.get('precision', '32-true')} "
               f"channels_last={str(bool(cfg.get('channels_last', False))).lower()} "
               f"compile={_compile_setting(cfg.get('compile', False))}")
    data = dataset.get("root")
    if dataset.get("name") == "synthetic" and data:
        data = os.path.join(data, "synthetic")
    lines = [
        f"trainer: {trainer} max_epochs={kwargs.get('max_epochs')} "
        f"validation every {kwargs.get('check_val_every_n_epoch')} epoch(s) and after the last",
        f"data: dataset={dataset.get('name')} in {data}; batch {dataset.get('batch_size')} "
        f"(P x K, K={dataset.get('num_instances')}) at {dataset.get('height')}x{dataset.get('width')}, "
        f"{dataset.get('num_workers')} loader worker(s) per process ({usable_cores()} cores here)",
        f"run folder: {paths.get('output_dir')}",
    ]
    return "\n".join(lines)
