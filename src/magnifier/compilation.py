"""``compile=...``: torch.compile of the network and of the loss, and the graph breaks it hit.

The whole MagnifierNet training step (network and every loss term) traces as one graph per
module: the SRB's erased regions are drawn with ``torch.randperm`` on the device (no Python
branch on their values), region pooling is a scatter, and the SFB's ``nn.LSTM``, which Dynamo
refuses by default (one graph break per call) and traces wrongly on CUDA when allowed
(``allow_rnn``: the hidden state gains a dimension, pytorch/pytorch#130791), runs as its
recurrence written out on the same weights (:func:`magnifier.models.branches.lstm_last_hidden`);
``allow_rnn`` stays on so that Dynamo may read those weights from the module.

Inductor (the default backend) draws random numbers from its own generator, seeded from
PyTorch's, so a compiled run erases other SRB regions than an eager run with the same seed (it
is still reproducible, and resumes exactly); ``compile='{options: {fallback_random: true}}'``
makes it draw as eager does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from magnifier.errors import UserError

#: torch.compile's ``mode`` values.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Keys ``compile`` may set as a mapping (torch.compile's keyword arguments).
KEYS = ("mode", "backend", "fullgraph", "dynamic", "options")


def compile_options(value: Any) -> dict[str, Any] | None:
    """The ``compile`` setting as torch.compile keyword arguments, or None for eager.

    ``false``/``null``: eager; ``true``: torch.compile's defaults (inductor); a mode name
    (``reduce-overhead`` for CUDA graphs, ``max-autotune``, ...); or a mapping of torch.compile's
    keyword arguments (``{backend: aot_eager}``, ``{mode: max-autotune, fullgraph: true}``).
    """
    hint = f"use compile=false, compile=true, a mode ({', '.join(MODES)}) or a mapping of {', '.join(KEYS)}"
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, str):
        if value not in MODES:
            raise UserError(f"compile={value}: not a torch.compile mode; {hint}")
        return {} if value == "default" else {"mode": value}
    if hasattr(value, "items"):
        options = dict(value.items())
        unknown = sorted(set(options) - set(KEYS))
        if unknown:
            raise UserError(f"compile: unknown key(s) {', '.join(unknown)}; {hint}")
        if options.get("mode") not in (None, *MODES):
            raise UserError(f"compile.mode={options['mode']}: not a torch.compile mode; {hint}")
        if hasattr(options.get("options"), "items"):  # a DictConfig from the command line
            options["options"] = dict(options["options"].items())
        return options
    raise UserError(f"compile={value!r}: {hint}")


def compile_in_place(module: torch.nn.Module, options: dict[str, Any]) -> None:
    """``module.compile(**options)``: compiled in place, so its state-dict keys (and therefore
    the checkpoints) are the eager module's."""
    import torch._dynamo

    # Dynamo refuses to touch an nn.LSTM module, even to read its weights (which the SFB's
    # written-out recurrence does), unless allowed.
    torch._dynamo.config.allow_rnn = True
    module.compile(**options)


def graph_breaks() -> Counter:
    """Graph breaks Dynamo has counted in this process so far, by reason."""
    from torch._dynamo.utils import counters

    return Counter(counters["graph_break"])


def compiled_frames() -> int:
    """Frames Dynamo has compiled in this process so far, recompilations included."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


class RecompileWatch:
    """Counts the compilations that happen between :meth:`start` and :meth:`stop` (e.g. within
    one training step after the first): each is a recompile, where a guard (a shape, a dtype, a
    Python value baked into the graph) failed. With CUDA graphs (``mode=reduce-overhead``) each
    also re-records the graphs, so a step that recompiles every time is slower than eager."""

    def __init__(self) -> None:
        self.total = 0
        self._at: int | None = None

    def start(self) -> None:
        self._at = compiled_frames()

    def stop(self) -> int:
        """The compilations since :meth:`start` (0 if it was not called); added to ``total``."""
        if self._at is None:
            return 0
        new, self._at = compiled_frames() - self._at, None
        self.total += new
        return new


def describe_recompile(step: int, new: int, total: int) -> str:
    """One line for a training step that compiled again."""
    return (f"torch.compile: step {step} recompiled {new} frame(s) ({total} so far after the first step); "
            "TORCH_LOGS=recompiles shows which guard failed")


def describe_graph_breaks(breaks: Counter) -> str:
    """One line: ``torch.compile: 0 graph breaks`` or the count and the reasons, most frequent first."""
    total = sum(breaks.values())
    if not total:
        return "torch.compile: 0 graph breaks"
    reasons = "; ".join(f"{n} x {reason.splitlines()[0]}" for reason, n in breaks.most_common(5))
    return f"torch.compile: {total} graph break(s): {reasons} (TORCH_LOGS=graph_breaks shows where)"
