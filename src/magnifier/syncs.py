"""Host round trips in a training step, found on any device (the CPU included).

On a CUDA device some operations hand a value back to the host: ``.item()``, ``bool(t)``,
``int(t)``, ``nonzero``, boolean-mask indexing, ``unique``, ``bincount``, ``repeat_interleave``
without ``output_size``. The host then waits until the GPU has finished all the work queued
before it, so it cannot run ahead and launch the next kernels while the GPU is busy; a step
that is bound by kernel launches (MagnifierNet's is, see the README's "Training speed on a GPU")
pays for each one.

``torch.cuda.set_sync_debug_mode`` finds them on a GPU (:class:`CudaSyncWatch`, used by
``benchmarks/train_speed.py --sync-check`` and ``debug=syncs``). :class:`HostSyncAudit` finds
the same operations at PyTorch's dispatcher, whatever the device, so the test suite checks the
step on the CPU. What it cannot see there: copies between host and device memory, since on a CPU
run every tensor is in host memory.

Two kinds of reads are made on the host in a CUDA run and are kept apart (``cpu_only``):

* ``F.one_hot``'s range checks: PyTorch reads the labels' minimum and maximum on the CPU only
  (on CUDA an out-of-range label trips a device assert instead);
* torch.optim's step counters: the non-capturable optimisers keep them in host memory on
  purpose, and fused Adam (the default on CUDA, ``optim.implementation=auto``) keeps them on the
  device and reads none.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operators that always return a value the host must read, or whose output size depends
#: on the values of their input (which the host must read to allocate it).
SYNCING_OPS = frozenset({
    "_local_scalar_dense",  # .item(), bool(t), int(t), float(t), if t: ...
    "nonzero", "nonzero_numpy", "argwhere", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "bincount", "equal", "allclose", "is_nonzero",
})
_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
#: Callers passed over when naming a place: PyTorch, Lightning's helpers, this module (and the
#: warnings machinery, see _internal).
_INTERNAL = ("torch/", "lightning_utilities/", "lightning_fabric/utilities/", "magnifier/syncs.py")


def is_syncing(func, args: tuple, kwargs: dict) -> bool:
    """Whether ATen operator ``func`` (an OpOverload) called with ``args`` and ``kwargs`` makes
    the host wait for a CUDA device."""
    name = func.overloadpacket.__name__
    if name in SYNCING_OPS:
        return True
    if name in _INDEXING and len(args) > 1:  # a boolean mask is turned into indices: nonzero
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    if name == "repeat_interleave":  # repeats as a tensor: the output size is their sum, unless given
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    return False


@dataclass(frozen=True)
class SyncEvent:
    """One operation that reads a value back on the host.

    ``op``: the ATen operator; ``where``: ``file:line`` of the innermost caller outside torch;
    ``stack``: up to 6 such callers, innermost first; ``cpu_only``: a read that does not wait
    for the GPU in a CUDA run (see the module docstring); ``step``: the audit's step counter at
    the time."""

    op: str
    where: str
    stack: tuple[str, ...]
    cpu_only: bool
    step: int | None


def _internal(filename: str) -> bool:
    """Whether ``filename`` is one of the callers a place is not named after. Matched on the
    path below site-packages (or src/): a virtual environment in a folder called torch (the
    H200 machine's /opt/torch/.venv) must not make every installed package look like PyTorch."""
    if filename.endswith("/warnings.py"):
        return True
    short = _short(filename)
    if short != filename:
        return short.startswith(_INTERNAL)
    return any(f"/{part}" in filename for part in _INTERNAL)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


class _OneHotScope(TorchFunctionMode):
    """Marks the calls of ``F.one_hot``, whose range checks run on the CPU only."""

    def __init__(self):
        super().__init__()
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.one_hot:
            self.depth += 1
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.depth -= 1
        return func(*args, **(kwargs or {}))


class HostSyncAudit(TorchDispatchMode):
    """Records every operation run inside it that would make the host wait for a CUDA device.

    Usage::

        with HostSyncAudit() as audit:
            loss = criterion(model(images, masks), pids)["loss"]
            loss.backward()
            optimizer.step()
        audit.device_syncs()  # [] for a step with no host round trip

    Each operation costs a Python call while the audit is on: it is a diagnostic, not something
    to leave on. ``step`` is copied into the events, for callers that audit several steps.
    Under ``torch.compile`` it sees the compiled graph's operators only where they fall back to
    eager kernels: audit an eager run.
    """

    def __init__(self):
        super().__init__()
        self.events: list[SyncEvent] = []
        self.step: int | None = None
        self._one_hot = _OneHotScope()

    def __enter__(self):
        self._one_hot.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._one_hot.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._one_hot.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_syncing(func, args, kwargs):
            self.events.append(self._event(func.overloadpacket.__name__))
        return func(*args, **kwargs)

    def _event(self, name: str) -> SyncEvent:
        stack, optimizer = _callers(sys._getframe(2))
        cpu_only = optimizer or self._one_hot.depth > 0
        return SyncEvent(name, stack[0] if stack else "?", stack, cpu_only, self.step)

    def device_syncs(self) -> list[SyncEvent]:
        """The events that would also wait for the GPU in a CUDA run."""
        return [e for e in self.events if not e.cpu_only]

    def summary(self) -> str:
        """:func:`summarize` of all the events."""
        return summarize(self.events)


def _callers(frame) -> tuple[tuple[str, ...], bool]:
    """Up to 6 ``file:line`` callers from ``frame`` outwards, skipping torch and this module;
    and whether torch.optim is among all the callers."""
    stack: list[str] = []
    optimizer = False
    while frame is not None:
        filename = frame.f_code.co_filename.replace("\\", "/")
        optimizer = optimizer or "torch/optim/" in _short(filename)
        if not _internal(filename) and len(stack) < 6:
            stack.append(f"{_short(filename)}:{frame.f_lineno}")
        frame = frame.f_back
    return tuple(stack), optimizer


#: What ``torch.cuda.set_sync_debug_mode("warn")`` says of each synchronising call.
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"


class CudaSyncWatch:
    """Records every call that synchronises a CUDA device while it is on, copies between host
    and device memory included (``torch.cuda.set_sync_debug_mode("warn")``): each warning
    PyTorch raises becomes a :class:`SyncEvent` (op ``cuda_sync``) instead of a printed line.
    Other warnings pass through. Where CUDA is not available it records nothing, unless
    ``enabled=True`` (the tests, which feed it warnings themselves).

    Usage::

        with CudaSyncWatch() as watch:
            train_step()
        summarize(watch.events)
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = torch.cuda.is_available() if enabled is None else enabled
        self.events: list[SyncEvent] = []
        self.step: int | None = None
        self._warnings = None
        self._show = None

    def __enter__(self):
        if self.enabled and self._warnings is None:
            self._warnings = warnings.catch_warnings()  # restores the filters and showwarning on exit
            self._warnings.__enter__()
            warnings.filterwarnings("always", message=f".*{CUDA_SYNC_WARNING}")
            self._show, warnings.showwarning = warnings.showwarning, self._record
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self._warnings is None:
            return None
        try:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
        finally:
            self._warnings.__exit__(*exc)
            self._warnings = None
        return None

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if CUDA_SYNC_WARNING not in str(message):
            self._show(message, category, filename, lineno, file, line)
            return
        stack, _ = _callers(sys._getframe(1))
        self.events.append(SyncEvent("cuda_sync", stack[0] if stack else f"{_short(filename)}:{lineno}", stack,
                                     False, self.step))


def summarize(events: list[SyncEvent]) -> str:
    """One line per place, most frequent first: ``N x op at file:line``."""
    counts = Counter((e.op, e.where, e.cpu_only) for e in events)
    lines = [f"{n} x {op} at {where}" + (" (host-only on CUDA)" if cpu_only else "")
             for (op, where, cpu_only), n in counts.most_common()]
    return "\n".join(lines) if lines else "no host round trips"
