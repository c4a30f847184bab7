"""``python -m magnifier.export``: write a trained network as an ONNX model.

The model maps a batch of images (N, 3, H, W), float32, RGB, scaled to [0, 1] and normalised
with the training mean/std, to the (N, D) L2-normalised embedding; the batch axis is dynamic.
A JSON sidecar (``<output>.json``) records the input size, channel order, normalisation and
output width for the programs that load it. Configuration: ``conf/export.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from magnifier.config import config_dir, register_resolvers  # noqa: E402
from magnifier.errors import UserError, discard_failed_start, exit_on_user_error  # noqa: E402

log = logging.getLogger("magnifier.export")
register_resolvers()

FORMATS = ("onnx",)
#: ImageNet statistics, the normalisation of every dataset config (used when a checkpoint
#: predates the saved data settings).
DEFAULT_INPUT = {"height": 256, "width": 128, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225]}


def default_output(ckpt_path: str | Path) -> Path:
    """Where the model goes without ``output=``: ``<run dir>/model.onnx``.

    The run dir is the training run's folder, the one that holds ``checkpoints/<ckpt>``; a
    checkpoint elsewhere (downloaded, copied) gets the model beside it.
    """
    ckpt = Path(ckpt_path)
    folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return folder / "model.onnx"


def export_onnx(net, path: Path, height: int, width: int, opset: int = 18) -> None:
    """Write ``net`` (eval mode) as ONNX: input ``images`` (N, 3, H, W) -> ``embedding`` (N, D)."""
    import torch

    net = net.eval().cpu()
    example = torch.rand(2, 3, height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            net, (example,), str(path), input_names=["images"], output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=int(opset), dynamo=False,
        )


def check_onnx(net, path: Path, height: int, width: int, batch_sizes=(1, 3)) -> float:
    """Largest |onnxruntime - PyTorch| over random batches of the given sizes."""
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in batch_sizes:
        x = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = net.eval().cpu()(x).numpy()
        got = session.run(["embedding"], {"images": x.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@exit_on_user_error
def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` as ``cfg.format``; returns the written file."""
    from magnifier.checkpoint import load_network

    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path is required: python -m magnifier.export ckpt_path=path/to/best.ckpt format=onnx")
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not supported; use format={' or '.join(FORMATS)}")
    net, info = load_network(cfg.ckpt_path, trust_checkpoint=bool(cfg.get("trust_checkpoint")))
    data = {**DEFAULT_INPUT, **{k: v for k, v in (info.get("data") or {}).items() if v is not None}}
    height = int(cfg.height or data["height"])
    width = int(cfg.width or data["width"])
    out = Path(cfg.output) if cfg.get("output") else default_output(cfg.ckpt_path)
    try:
        export_onnx(net, out, height, width, int(cfg.opset))
    except OSError as err:
        raise UserError(f"output={out}: cannot write the model ({err.strerror or err})") from None
    sidecar = {
        "format": "onnx",
        "opset": int(cfg.opset),
        "input": {"name": "images", "shape": ["N", 3, height, width], "dtype": "float32",
                  "channel_order": "RGB", "layout": "NCHW",
                  "preprocessing": "resize to (height, width) bilinear (cv2.INTER_LINEAR, aspect "
                                   "ratio not kept), scale uint8 to [0, 1] (x / 255), subtract mean "
                                   "and divide by std per channel",
                  "value_range_before_normalisation": [0.0, 1.0],
                  "mean": list(data["mean"]), "std": list(data["std"])},
        "output": {"name": "embedding", "shape": ["N", info.get("embedding_dim")],
                   "dtype": "float32", "l2_normalised": True, "distance": "euclidean (or cosine)"},
        "checkpoint": str(cfg.ckpt_path),
        "model": info["model"],
        "num_classes": info["num_classes"],
    }
    if cfg.get("check", True):
        diff = check_onnx(net, out, height, width)
        sidecar["max_abs_difference_vs_pytorch"] = diff
        if diff > 1e-4:
            raise UserError(f"{out}: onnxruntime differs from PyTorch by {diff:.2e} (> 1e-4); "
                            f"try another opset (opset=17) and report the model config")
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): images (N, 3, {height}, {width}) "
          f"RGB normalised -> embedding (N, {info.get('embedding_dim')})"
          + (f"; onnxruntime vs PyTorch max |diff| {sidecar['max_abs_difference_vs_pytorch']:.1e}"
             if cfg.get("check", True) else ""), flush=True)
    return out


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)
    # The model went beside the checkpoint (or to output=): the run folder Hydra made for this
    # command holds nothing (conf/export.yaml: no .hydra/, no log). It goes, with the empty
    # runs/ and export/ folders above it, as the folder of a run that failed its start does.
    discard_failed_start()


if __name__ == "__main__":
    from magnifier.cli import run_entry_point

    run_entry_point(main, "export")
