"""Host time the training process spends taking one training batch from the loader workers, by
``dataset.sharing_strategy``.

The training loader of ``conf/dataset/<dataset>`` (the synthetic set by default, 256x128,
batch 64, uint8 images as ``normalize_on_device`` hands them to a GPU) is iterated with a pause
between batches (``--step-ms``, a training step's time), so that the workers are ahead and
``next()`` only receives a batch that is ready: what remains is unpickling it and rebuilding
its tensors from shared memory, host work of the training process (on a GPU, of its pinning
thread, which competes with the training thread for the interpreter). Each strategy runs in
its own process, alternating, ``--repeats`` times; the figure is the median over all batches.

Usage: python benchmarks/loader_host.py [--batches 30] [--step-ms 50] [--repeats 3] [--workers 2]
       [--data-dir data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

STRATEGIES = ("file_descriptor", "file_system")


def child(strategy: str, batches: int, step_ms: float, workers: int, data_dir: str, height: int, width: int) -> dict:
    import torch
    from hydra.utils import instantiate

    from magnifier.config import compose_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("train", [f"paths.data_dir={data_dir}", f"dataset.height={height}", f"dataset.width={width}",
                                       "dataset.batch_size=64", f"dataset.num_workers={workers}",
                                       "dataset.normalize_on_device=true", f"dataset.sharing_strategy={strategy}"], tmp)
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    times, tensors = [], 0
    while len(times) < batches:
        it = iter(loader)
        first = next(it)
        tensors = sum(torch.is_tensor(v) for v in first.values())
        for _ in range(batches - len(times)):
            time.sleep(step_ms / 1e3)  # a training step: the workers get ahead
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
    return {"strategy": torch.multiprocessing.get_sharing_strategy(), "next_ms": [1e3 * t for t in times],
            "tensors_per_batch": tensors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--step-ms", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batches, args.step_ms, args.workers, args.data_dir, args.height,
                               args.width)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import machine

    times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    tensors = 0
    for _ in range(args.repeats):
        for strategy in STRATEGIES:
            run = subprocess.run([sys.executable, __file__, "--child", strategy, "--batches", str(args.batches),
                                  "--step-ms", str(args.step_ms), "--workers", str(args.workers), "--data-dir",
                                  args.data_dir, "--height", str(args.height), "--width", str(args.width)],
                                 capture_output=True, text=True, check=True)
            out = json.loads(run.stdout.strip().splitlines()[-1])
            assert out["strategy"] == strategy, out["strategy"]
            times[strategy] += out["next_ms"]
            tensors = out["tensors_per_batch"]
    result = {"machine": machine(), "batch": 64, "size": f"{args.height}x{args.width}", "workers": args.workers,
              "step_ms": args.step_ms, "tensors_per_batch": tensors,
              "next_ms_median": {s: statistics.median(v) for s, v in times.items()}, "next_ms": times}
    print(f"{result['machine']}; training batch of 64 at {result['size']} ({tensors} tensors), {args.workers} workers, "
          f"a {args.step_ms:.0f} ms pause between batches, median of {len(times[STRATEGIES[0]])} batches")
    for s in STRATEGIES:
        print(f"  next() with the batch ready, sharing_strategy={s:16s} {result['next_ms_median'][s]:6.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
