"""Ending a distributed run cleanly.

Lightning initialises the default process group when a DDP run starts and, on purpose, never
destroys it: the group outlives ``Trainer.fit`` so ``Trainer.test`` can reuse it. Left alone, it
is torn down by the interpreter at exit, while Python itself is being finalised. Gloo's worker
threads can still be releasing tensors then; a C++ thread that asks for the GIL during
finalisation is ended by the interpreter, its unwinding crosses a ``noexcept`` frame, and the
process dies with ``terminate called without an active exception`` (SIGABRT, exit code -6 /
134) after a run that trained correctly. A cluster scheduler marks such a job failed.

:func:`close_process_group` closes the group while the interpreter is fully alive: every rank
waits for the others at a barrier (so no rank tears down a group a peer still uses), then
destroys it, which joins Gloo's threads. Call it once, at the end of a successful run, on every
rank; ``python -m magnifier.train`` does. It is not called after an error: Lightning already
stops the other ranks then, and a barrier with a missing peer would only wait.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["close_process_group"]

log = logging.getLogger(__name__)


def close_process_group(timeout_s: float = 300.0) -> bool:
    """Synchronise every rank, then destroy the default process group.

    Args:
        timeout_s: how long a Gloo rank waits at the barrier for the others before giving up
            (Gloo's monitored barrier names the ranks that did not arrive). NCCL uses a plain
            barrier on this process's device.

    Returns:
        True if a process group was destroyed, False if there was none (a single-process run)
        or a rank did not reach the barrier (the group is then left to the interpreter: its
        peer is gone and the run is failing anyway).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    backend = dist.get_backend()
    try:
        if backend == "gloo":
            # Unlike barrier(), this one times out and says which rank is missing.
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        elif backend == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    except RuntimeError as err:  # a peer died or timed out: destroying could wait on it
        log.warning("ranks did not meet before closing the process group (%s); leaving it open", err)
        return False
    dist.destroy_process_group()
    return True
