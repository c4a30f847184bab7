"""Does a two-process DDP training exit cleanly? Run it many times and count the exit codes.

A DDP run that leaves its Gloo process group to the interpreter's exit can abort after training
(``terminate called without an active exception``, SIGABRT): rarely, at random. This script runs
the same two-process training ``--runs`` times in a row and reports every exit code.

    python benchmarks/ddp_exit.py --runs 30                    # python -m magnifier.train, trainer=ddp_sim
    python benchmarks/ddp_exit.py --runs 30 --mode lightning   # a bare Lightning fit + close_process_group()
    python benchmarks/ddp_exit.py --runs 30 --mode lightning --no-close   # the same without it (the bug)
    python benchmarks/ddp_exit.py --runs 30 --mode gloo [--no-close]      # the cause, provoked

The abort is rare in a real fit (the issue saw 1 in 20); ``--mode gloo`` provokes its cause on
purpose: two processes queue 200 asynchronous Gloo all-reduces, wait for the 100th only, and
exit, with or without ``close_process_group()`` first.

``--parallel J`` runs J trainings at a time (each takes two processes; use it on a machine with
many cores). Exit code 0 is a clean run; -6 or 134 (SIGABRT) is the abort this guards against.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import TINY, tiny_overrides  # noqa: E402  (the same tiny dataset as the tests)

# A bare Lightning DDP fit on two CPU processes: what a user's own script looks like.
LIGHTNING_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 4)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if __name__ == "__main__":
        g = torch.Generator().manual_seed(0)
        ds = TensorDataset(torch.randn(256, 8, generator=g), torch.randint(0, 4, (256,), generator=g))
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(M(), DataLoader(ds, batch_size=16))
        if sys.argv[1] == "close":
            from magnifier.distributed import close_process_group
            close_process_group()
    """
)

# The cause, provoked: Gloo work still alive when the interpreter finalises.
GLOO_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def body(rank, port, close):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=2)
        works = [dist.all_reduce(torch.randn(1000), async_op=True) for _ in range(200)]
        works[99].wait()  # about half of them still queued when the program ends
        if close:
            from magnifier.distributed import close_process_group
            close_process_group()

    if __name__ == "__main__":
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=body, args=(r, port, sys.argv[1] == "close")) for r in range(2)]
        [p.start() for p in procs]
        [p.join() for p in procs]
        codes = [p.exitcode for p in procs]
        print("rank exit codes", codes)
        sys.exit(0 if codes == [0, 0] else 134)
    """
)

def _train_command(data_dir: Path, log_dir: Path) -> list[str]:
    """The test suite's tiny two-process training (tests/test_train.py's DDP run), one epoch."""
    overrides = tiny_overrides(data_dir) + [
        f"paths.log_dir={log_dir}", "trainer=ddp_sim", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
        "logger=csv", "dataset.batch_size=8",
    ]
    return [sys.executable, "-m", "magnifier.train", *overrides]


def _one(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, bool, float]:
    """(exit code, whether the output shows the abort, seconds); exit code None on a time-out."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, False, time.perf_counter() - t0
    aborted = "terminate called" in proc.stdout + proc.stderr
    return proc.returncode, aborted, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--mode", choices=["train", "lightning", "gloo"], default="train")
    p.add_argument("--no-close", action="store_true", help="lightning and gloo modes: leave the process group to the interpreter")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()

    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               WANDB_MODE="offline", PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.mode in ("lightning", "gloo"):
            script = tmp / f"{args.mode}.py"
            script.write_text(LIGHTNING_SCRIPT if args.mode == "lightning" else GLOO_SCRIPT)
            commands = [[sys.executable, str(script), "keep" if args.no_close else "close"]] * args.runs
            what = "bare Lightning fit" if args.mode == "lightning" else "200 Gloo all-reduces in flight at exit"
            label = f"{what}, {'no close' if args.no_close else 'close_process_group()'}"
        else:
            from magnifier.data import synthetic

            synthetic.generate(tmp / "data" / "synthetic", **TINY, processes=1)
            commands = [_train_command(tmp / "data", tmp / f"logs{i}") for i in range(args.runs)]
            label = "python -m magnifier.train trainer=ddp_sim (1 epoch, tiny synthetic data)"
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            results = []
            for i, res in enumerate(pool.map(lambda c: _one(c, tmp, env, args.timeout), commands), 1):
                results.append(res)
                print(f"run {i:3d}: exit {res[0]}{'  (terminate called)' if res[1] else ''}  {res[2]:.1f} s", flush=True)
    codes = Counter(r[0] for r in results)
    aborts = sum(1 for r in results if r[0] in (-6, 134) or r[1])
    print(f"\n{label}: {args.runs} runs in {time.perf_counter() - t0:.0f} s, {args.parallel} at a time")
    print("exit codes: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items(), key=lambda kv: str(kv[0]))))
    print(f"aborted at exit: {aborts} of {args.runs}")
    sys.exit(0 if set(codes) == {0} else 1)


if __name__ == "__main__":
    main()
