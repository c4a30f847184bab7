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
    the inputs alone is not enough. The losses apply it as ``name = float32_loss(_name)``; the
    wrapper takes the public name (``_name`` without its underscore).
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

    public = fn.__name__.lstrip("_")
    wrapper.__name__, wrapper.__qualname__ = public, fn.__qualname__.replace(fn.__name__, public)
    return wrapper  # type: ignore[return-value]
