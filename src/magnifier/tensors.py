"""Small tensors that every step needs on the device, made once per process and device."""

from __future__ import annotations

import torch

_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _in_graph() -> bool:
    """True while a graph is being built (torch.compile, torch.jit.trace, ONNX export)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def device_constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.long,
                    shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A tensor of ``values`` (1-D, or viewed as ``shape``) on ``device``, made once per process,
    device, dtype and shape: building it each step would copy from host memory every time (a copy
    the GPU stream waits for), and viewing it each step costs a dispatch. While a graph is built
    a fresh tensor is returned: the graph keeps it as a constant of its own, and torch.compile
    would otherwise guard on this cache's contents and compile again once the first call had
    filled it."""
    if _in_graph():
        made = torch.tensor(values, dtype=dtype, device=device)
        return made.view(shape) if shape is not None else made
    key = (values, str(device), dtype, shape)
    if key not in _CONSTANTS:
        made = torch.tensor(values, dtype=dtype, device=device)
        _CONSTANTS[key] = made.view(shape) if shape is not None else made
    return _CONSTANTS[key]
