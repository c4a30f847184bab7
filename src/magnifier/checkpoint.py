"""Rebuild a trained network from a checkpoint of ``python -m magnifier.train``.

Used by ``python -m magnifier.evaluate`` and ``python -m magnifier.export``. Checkpoints are
read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file from
elsewhere cannot run code when it is opened. ``trust_checkpoint=True`` lifts that, for files
you trust that hold other objects.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import torch

from magnifier.errors import UserError

__all__ = ["check_resume_fits", "init_network", "load_network", "optimizer_state", "read_checkpoint",
           "read_resume_checkpoint"]

_PRODUCER = "a .ckpt written by python -m magnifier.train"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False,
                    map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with one-line :class:`UserError` for a missing, refused or broken file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ckpt_path={path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_checkpoint, mmap=mmap)
    except pickle.UnpicklingError as err:
        # A refusal names the object it would have to import ("Unsupported global: GLOBAL
        # x.y"); other weights-only failures ("Unsupported operand") are broken bytes.
        if not trust_checkpoint and "GLOBAL" in str(err):
            reason = next(ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln)
            raise UserError(
                f"{path}: the weights-only loader refused it ({reason[:120]}); it holds pickled "
                "objects that could run code: only if you trust the file, add trust_checkpoint=true"
            ) from None
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    except Exception as err:  # zip/EOF/reader errors of a truncated or foreign file
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {_first_line(err)}); "
            f"is the copy complete? ckpt_path must be {_PRODUCER}"
        ) from None


def _describe_mismatch(path: Path, expected: dict, state: dict) -> str | None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    return (f"{path}: its weights do not fit the model its config describes: "
            f"{'; '.join(parts)}; was it written by another model or version?")


#: Model options added after checkpoints were first written, with the behaviour those older
#: checkpoints were trained with (the new defaults follow the authors' code instead).
_OLD_DEFAULTS = {"classifier_bias": False, "grid_sampling": "corner", "parsing_init": "pytorch", "attribute_head": "ours"}


def _fill_old_defaults(cfg: dict) -> None:
    """A MagnifierNet config saved before these options existed keeps the network it was trained as."""
    if str(cfg.get("_target_", "")).endswith("MagnifierNet"):
        for key, value in _OLD_DEFAULTS.items():
            cfg.setdefault(key, value)


def load_network(
    ckpt_path: str | Path,
    trust_checkpoint: bool = False,
    map_location: str | torch.device = "cpu",
    model_cfg: dict | None = None,
) -> tuple[torch.nn.Module, dict]:
    """The trained network of a checkpoint, in eval mode, and what is known about it.

    Args:
        ckpt_path: a Lightning checkpoint of :class:`magnifier.module.ReIDModule`
            (``hyper_parameters.net`` is the model config, ``state_dict`` holds ``net.*``), or,
            with ``model_cfg``, a bare state dict of the network.
        trust_checkpoint: unpickle arbitrary objects (only for files you trust).
        map_location: where the tensors are loaded.
        model_cfg: for a bare state dict: the model config (``_target_`` and arguments, as in
            ``conf/model/``) including ``num_classes``.

    Returns:
        ``(net, info)``: the network (eval mode, on ``map_location``) and a dict with ``model``
        (the config), ``num_classes``, ``embedding_dim``, ``data`` (input ``height``/``width``,
        ``mean``/``std`` of the training run, or None for checkpoints that predate it),
        ``epoch`` and ``global_step`` (None for a bare state dict).

    Raises:
        UserError: one line naming the file for a missing, refused, unreadable or foreign file
            and for weights that do not fit the model.
    """
    from hydra.utils import instantiate

    path = Path(ckpt_path)
    ckpt = read_checkpoint(path, trust_checkpoint, map_location)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if trust_checkpoint and hparams is not None:  # fully unpickled: OmegaConf nodes are possible
        from omegaconf import OmegaConf

        if OmegaConf.is_config(hparams):
            hparams = OmegaConf.to_container(hparams, resolve=True)
        if isinstance(hparams, dict):
            hparams = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in hparams.items()}
    if isinstance(hparams, dict) and isinstance(hparams.get("net"), dict) and "state_dict" in ckpt:
        cfg = copy.deepcopy(dict(hparams["net"]))
        num_classes = hparams.get("num_classes")
        state = _network_state(path, ckpt)
        data, epoch, step = hparams.get("data"), ckpt.get("epoch"), ckpt.get("global_step")
        _fill_old_defaults(cfg)
    elif model_cfg is not None and isinstance(ckpt, dict) and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()):
        cfg = copy.deepcopy(dict(model_cfg))
        num_classes = cfg.pop("num_classes", None)
        state, data, epoch, step = ckpt, None, None, None
    else:
        raise UserError(
            f"{path}: not a magnifier checkpoint (no hyper_parameters.net and net.* weights); "
            f"ckpt_path must be {_PRODUCER}"
        )
    if not state or num_classes is None:
        raise UserError(f"{path}: the checkpoint has no network weights or no num_classes; "
                        f"ckpt_path must be {_PRODUCER}")
    # The weights come from the file: never fetch or read the backbone's initial weights.
    if isinstance(cfg.get("backbone"), dict):
        cfg["backbone"] = {**cfg["backbone"], "pretrained": False, "weights": None}
    try:
        net = instantiate(cfg, num_classes=int(num_classes))
    except Exception as err:
        raise UserError(f"{path}: cannot build the model it describes ({_first_line(err)})") from None
    problem = _describe_mismatch(path, net.state_dict(), state)
    if problem:
        raise UserError(problem)
    net.load_state_dict(state)
    net = net.to(map_location).eval()
    info = {
        "model": cfg,
        "num_classes": int(num_classes),
        "embedding_dim": getattr(net, "embedding_dim", None),
        "data": data,
        "epoch": epoch,
        "global_step": step,
    }
    return net, info


def _current_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older layouts under today's names: separate SFB region heads become the stacked ones."""
    from magnifier.models.branches import stack_region_heads

    for key in [k for k in state if k.endswith("region_bns.0.weight")]:
        stack_region_heads(state, key[: -len("region_bns.0.weight")])
    return state


def _network_state(path: Path, ckpt: Any) -> dict[str, torch.Tensor]:
    """The network's tensors in a training checkpoint (``net.*``) or a bare state dict."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return _current_names({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return _current_names(dict(ckpt))
    raise UserError(f"init_from={path}: no network weights in it; it must be {_PRODUCER} or a state dict")


def init_network(net: torch.nn.Module, path: str | Path, trust_checkpoint: bool = False, ckpt: Any = None) -> str:
    """Initialise ``net`` from the weights of another run (not a resume: no epoch, no optimiser).

    Every tensor whose name and shape match is copied. Classifier layers (names containing
    ``classifier``) of another size, or absent from the file, keep their fresh initialisation:
    fine-tuning on a dataset with another number of identities. Any other tensor of another
    shape means another architecture and is refused; layers the file lacks (a branch the other
    run did not have) stay fresh and are named. Returns the one-line report. ``ckpt``: the file's
    contents when the caller has read it already (it is large; read it once).
    """
    path = Path(path)
    state = _network_state(path, read_checkpoint(path, trust_checkpoint) if ckpt is None else ckpt)
    own = net.state_dict()
    fresh_classifiers, other_shape, absent = [], [], []
    loaded = {}
    for name, tensor in own.items():
        if name not in state:
            (fresh_classifiers if "classifier" in name else absent).append(name)
        elif tuple(state[name].shape) != tuple(tensor.shape):
            if "classifier" in name:
                fresh_classifiers.append(name)
            else:
                other_shape.append(f"{name} {tuple(state[name].shape)} vs {tuple(tensor.shape)}")
        else:
            loaded[name] = state[name]
    if other_shape:
        raise UserError(f"init_from={path}: {len(other_shape)} weights of another shape (e.g. {other_shape[0]}); "
                        "it was trained with another backbone or branch width; pick a checkpoint of the same model")
    if not any(name.startswith("backbone.") for name in loaded):
        raise UserError(f"init_from={path}: none of its weights fit this model's backbone; "
                        "pick a checkpoint of the same backbone")
    net.load_state_dict(loaded, strict=False)
    report = f"init_from={path}: {len(loaded)} of {len(own)} tensors loaded"
    layers = sorted({name.rsplit(".", 1)[0] for name in fresh_classifiers})
    if layers:
        report += f"; re-initialised (another size or not in the file): {', '.join(layers)}"
    modules = sorted({name.split(".", 1)[0] for name in absent})
    if modules:
        report += f"; not in the file, kept at their initialisation: {len(absent)} tensors of {', '.join(modules)}"
    return report


#: What Lightning needs to continue a run: without any of these, ``Trainer.fit`` fails deep inside.
_RESUME_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states")


def read_resume_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict:
    """The contents of a checkpoint to resume from (``ckpt_path``), checked before the run starts.

    Memory-mapped: only what is looked at is read. A truncated file, a file of another program
    (a bare state dict, a torchreid ``.pth``) or a checkpoint that cannot continue training
    gives a one-line :class:`UserError` instead of Lightning's traceback after the loggers start.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, trust_checkpoint, mmap=True)
    missing = [k for k in _RESUME_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if missing or not isinstance(hparams, dict) or "net" not in hparams:
        what = f"it lacks {', '.join(missing)}" if missing else "it has no model config (hyper_parameters.net)"
        raise UserError(f"ckpt_path={path}: not a training checkpoint to resume ({what}); it must be {_PRODUCER} "
                        f"(its checkpoints/last.ckpt); to start from weights only use init_from={path}")
    return ckpt


def check_resume_fits(net: torch.nn.Module, path: str | Path, ckpt: dict) -> None:
    """Refuse, in one line, to resume ``net`` from weights of another architecture."""
    problem = _describe_mismatch(Path(path), net.state_dict(), _network_state(Path(path), ckpt))
    if problem:
        raise UserError(f"ckpt_path={problem}; resume with the model, backbone and dataset of that run "
                        "(its .hydra/overrides.yaml), or use init_from= to start from its weights")


def optimizer_state(path: str | Path, trust_checkpoint: bool = False, ckpt: Any = None) -> dict:
    """The first optimiser's state in a training checkpoint (Adam's moments and step counts)."""
    path = Path(path)
    ckpt = read_checkpoint(path, trust_checkpoint) if ckpt is None else ckpt
    states = ckpt.get("optimizer_states") if isinstance(ckpt, dict) else None
    if not states:
        raise UserError(f"init_optimizer=true but init_from={path} holds no optimiser state; "
                        f"use a .ckpt written by python -m magnifier.train, or init_optimizer=false")
    return states[0]
