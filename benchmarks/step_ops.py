"""Operations one training step dispatches: the Lightning loop (``python -m magnifier.train``'s
``train()``, with every callback of ``conf/callbacks/default.yaml``) against the bare loop
(forward, loss, ``zero_grad``, backward, Adam step on the same network, loss and batch).

On a GPU the MagnifierNet step is bound by the host, where every dispatched operation (a
kernel launch, a view, a copy) costs tens of microseconds (about 33 µs on the H200 machine:
1,520 kernels in a 49.6 ms step), so the operations the Lightning loop adds per step are a
device-independent measure of what it costs there beyond the bare loop. Counted at PyTorch's
dispatcher on the CPU (the training thread; the loader workers are separate processes), over
``--steps`` steps that do not write logs (a GPU preset's ``log_every_n_steps=50``), with the
images normalised "on the device" after the transfer as on a GPU.

Usage: python benchmarks/step_ops.py [--steps 3] [--backbone resnet18] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

SMALL = dict(num_ids=64, num_cams=3, images_per_cam=2, height=64, width=32, seed=0)  # 24 steps an epoch
FIRST = 6  # counted steps start here: after the first steps' one-off work (constants, allocations)


class _Record(TorchDispatchMode):
    def __init__(self, names: list[str]):
        super().__init__()
        self.names = names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class OpsPerStep(pl.Callback):
    """Records the operations from the end of step FIRST - 1 to the end of each of the next
    ``steps`` steps: the fetch and transfer of the batch, the step, the callbacks."""

    last: "OpsPerStep | None" = None

    def __init__(self, steps: int = 3):
        self.steps, self.per_step, self._mode, self._names = steps, [], None, []
        OpsPerStep.last = self

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # already counts this step
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.per_step.append(Counter(self._names))
            self._mode = None
        if FIRST <= step < FIRST + self.steps:
            self._names = []
            self._mode = _Record(self._names)
            self._mode.__enter__()


def lightning_ops(data_dir: str, backbone: str, steps: int) -> tuple[list[Counter], dict]:
    from magnifier.config import compose_config
    from magnifier.train import train

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"paths.data_dir={data_dir}", f"paths.log_dir={out}", f"model/backbone={backbone}",
                     "model.backbone.pretrained=false", "dataset.height=64", "dataset.width=32",
                     "dataset.batch_size=16", "dataset.num_workers=1", "dataset.normalize_on_device=true",
                     "trainer.log_every_n_steps=50", f"+trainer.max_steps={FIRST + steps + 1}",
                     "trainer.max_epochs=100", "trainer.check_val_every_n_epoch=100", "test=false", "logger=csv",
                     "~callbacks.progress_bar", f"+callbacks.step_ops._target_={__name__}.OpsPerStep",
                     f"+callbacks.step_ops.steps={steps}"]
        overrides += [f"dataset.synthetic.{k}={v}" for k, v in SMALL.items()]
        cfg = compose_config("train", overrides, out)
        train(cfg)
    return OpsPerStep.last.per_step, dict(cfg.model)


def bare_ops(data_dir: str, backbone: str) -> Counter:
    """One bare step on the same model, loss and a batch normalised already."""
    from hydra.utils import instantiate

    from magnifier.config import compose_config

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"paths.data_dir={data_dir}", f"model/backbone={backbone}", "model.backbone.pretrained=false",
                     "dataset.height=64", "dataset.width=32", "dataset.batch_size=16", "dataset.num_workers=0"]
        overrides += [f"dataset.synthetic.{k}={v}" for k, v in SMALL.items()]
        cfg = compose_config("train", overrides, out)
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    net = instantiate(cfg.model, num_classes=datamodule.num_classes)
    criterion = instantiate(cfg.loss)
    optimizer = torch.optim.Adam(net.parameters(), lr=3.5e-4, weight_decay=5e-4, foreach=True)

    def step() -> None:
        loss = criterion(net(batch["image"], batch["mask"]), batch["pid"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    names: list[str] = []
    with _Record(names):
        step()
    return Counter(names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--data-dir", default=None, help="where the small synthetic set is built (default: a temporary folder)")
    p.add_argument("--json")
    args = p.parse_args()
    sys.modules.setdefault("step_ops", sys.modules[__name__])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        per_step, _ = lightning_ops(data_dir, args.backbone, args.steps)
        bare = bare_ops(data_dir, args.backbone)
    totals = [sum(c.values()) for c in per_step]
    median = sorted(totals)[len(totals) // 2]
    counted = per_step[totals.index(median)]
    extra = counted - bare  # operations the Lightning step dispatches beyond the bare step's
    fewer = bare - counted  # and the other way (none expected)
    result = {"backbone": args.backbone, "lightning_ops_per_step": totals, "bare_ops_per_step": sum(bare.values()),
              "extra_ops": sum(extra.values()), "extra_by_op": dict(extra.most_common()),
              "bare_only_by_op": dict(fewer.most_common())}
    print(f"MagnifierNet {args.backbone}, batch 16 at 64x32, CPU, torch {torch.__version__}")
    print(f"  operations per step: Lightning loop {totals} (steps without logging), bare loop {result['bare_ops_per_step']}")
    print(f"  the Lightning step's extra operations: {result['extra_ops']}")
    for name, n in extra.most_common(15):
        print(f"    {n:4d}  {name}")
    if fewer:
        print(f"  operations only the bare step dispatches: {dict(fewer.most_common(8))}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
