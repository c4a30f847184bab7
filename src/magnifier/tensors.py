"""Small tensors that every step needs on the device, made once per process and device."""

from __future__ import annotations

import torch

_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _in_graph() -> bool:
    """True while a graph is being built (torch.compile, torch.jit.trace, ONNX export)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def device_constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A tensor of ``values`` (1-D) on ``device``, made once per process, device and dtype:
    building it each step would copy from host memory every time (a copy the GPU stream waits
    for). While a graph is built a fresh tensor is returned: the graph keeps it as a constant of
    its own, and torch.compile would otherwise guard on this cache's contents and compile again
    once the first call had filled it."""
    if _in_graph():
        return torch.tensor(values, dtype=dtype, device=device)
    key = (values, str(device), dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _CONSTANTS[key]
