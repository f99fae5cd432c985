"""Running one decoder layer at a time: the helpers the engine and the layer-wise methods (AWQ) share.

A layer's calibration inputs are `LayerInputs`, one (hidden_states, kwargs) per batch. `on_device` holds
the layer on the compute device in the forward dtype and yields an fp32 master copy of its floating
state, from which the compressed weights are written back; `advance` turns the inputs into the next
layer's; `share_result_weights` leaves one weight tensor per compressed linear once the layer is home.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from .result import CompressedLinear

LayerInputs = list[tuple[torch.Tensor, dict[str, Any]]]  # one (hidden_states, kwargs) per batch


class LayerCompressor(Protocol):
    """Compresses the linears of one decoder layer; advances `inputs` (in place) to the next layer's
    inputs when `rerun`; calls `release` after each phase. Returns full name -> result."""

    def __call__(self, layer: nn.Module, prefix: str, inputs: LayerInputs | None, config: Any,
                 device: torch.device, forward_dtype: torch.dtype, rerun: bool,
                 groups: list[list[str]] | None = None,
                 release: Callable[[], object] = ...) -> dict[str, CompressedLinear]: ...


def leading_samples(value: Any, batch: int, count: int) -> Any:
    """`value` (a layer's or module's call arguments: tensors, tuples, dicts of them) cut to the first
    `count` samples of a batch of `batch` wherever a tensor is batched (leading dim == batch)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[:count]
    if isinstance(value, tuple):
        return tuple(leading_samples(v, batch, count) for v in value)
    if isinstance(value, dict):
        return {key: leading_samples(v, batch, count) for key, v in value.items()}
    return value


def run_layer(layer: nn.Module, inputs: LayerInputs) -> None:
    """Every batch through the layer, keeping no output (for the hooks that watch it)."""
    for hidden, kwargs in inputs:
        layer(hidden, **kwargs)


def advance(layer: nn.Module, inputs: LayerInputs) -> None:
    """Replace each batch of `inputs` by the layer's output, batch by batch: a second full set of
    activations is never held."""
    for index, (hidden, kwargs) in enumerate(inputs):
        inputs[index] = (layer_output(layer, hidden, kwargs), kwargs)


def layer_output(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class StopForward(Exception):
    """Cuts a forward short once the hooks have what they need."""


@contextlib.contextmanager
def on_device(layer: nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
    """The layer on `device` in `dtype`, yielding an fp32 master copy of its floating state.

    On exit every floating tensor is restored from the master copy (which the caller may have updated
    with compressed weights) in its original device and dtype, so casting never loses precision.
    """
    tensors = floating_state(layer)
    homes = {name: (t.device, t.dtype) for name, t in tensors.items()}
    other_home = device_of(layer)
    master = {name: t.detach().to(device, torch.float32, copy=True) for name, t in tensors.items()}
    try:
        load(layer, master, device, dtype)
        layer.to(device)  # what is left: non-floating buffers
        yield master
    finally:
        for name, t in floating_state(layer).items():
            t.data = master[name].to(*homes[name])
        if other_home is not None:
            layer.to(other_home)


def floating_state(module: nn.Module) -> dict[str, torch.Tensor]:
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: t for name, t in named if t.is_floating_point()}


def load(layer: nn.Module, master: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
    """The layer's floating state from the master copy, on `device` in `dtype`."""
    for name, t in floating_state(layer).items():
        t.data = master[name].to(device, dtype)


def device_of(module: nn.Module) -> torch.device | None:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


def share_result_weights(layer: nn.Module, prefix: str, results: dict,
                         on_rounded: Callable[[CompressedLinear], object] | None = None) -> None:
    """Once a layer is back home, each compressed linear and its result hold one weight tensor, not two.

    - The model holds the result's dtype: the parameter becomes the result's weight where the two hold the
      same values in the same place (a CUDA run copies both back to the host, and the model would otherwise
      end up with every compressed weight twice in host memory).
    - The model is held in a lower precision (bf16, fp16): the result takes the parameter, which is its fp32
      weight rounded once to that dtype, and the fp32 copy is dropped. Its codes stay exact; `on_rounded`
      is called with the new result (SpQR counts its outliers again: rounding can land one on its grid).
    """
    for name, module in layer.named_modules():
        key = f"{prefix}.{name}"
        result = results.get(key)
        if not isinstance(module, nn.Linear) or not isinstance(result, CompressedLinear):
            continue
        weight = module.weight
        if weight.dtype != result.weight.dtype and weight.element_size() < result.weight.element_size():
            results[key] = dataclasses.replace(result, weight=weight.detach(), info=dict(result.info))
            if on_rounded is not None:
                on_rounded(results[key])
        elif (weight.data_ptr() != result.weight.data_ptr() and weight.dtype == result.weight.dtype
                and weight.device == result.weight.device and torch.equal(weight, result.weight)):
            weight.data = result.weight
