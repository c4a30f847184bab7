"""Losses run in float32 even inside mixed-precision autocast regions."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def float32_loss(fn: F) -> F:
    """Run ``fn`` with autocast off and its floating tensor arguments cast to float32.

    Squared distances, norms and softmax sums overflow float16 (and lose precision in bfloat16);
    a matmul inside autocast would run in half precision even on float32 inputs, so casting
    the inputs alone is not enough.
    """

    def cast(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.float()
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v) for v in x)
        return x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
