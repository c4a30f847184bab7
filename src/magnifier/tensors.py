"""Small tensors that every step needs on the device, made once per process and device."""

from __future__ import annotations

import torch

_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A tensor of ``values`` (1-D) on ``device``, made once per process, device and dtype:
    building it each step would copy from host memory every time (a copy the GPU stream waits
    for). While tracing or exporting to ONNX a fresh tensor is returned (the graph keeps it)."""
    key = (values, str(device), dtype)
    if key not in _CONSTANTS or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        tensor = torch.tensor(values, dtype=dtype, device=device)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return tensor  # an exported graph holds it as a constant of its own
        _CONSTANTS[key] = tensor
    return _CONSTANTS[key]
