"""The layer-wise sequential engine for Hugging Face decoder-only models (Llama-style layout).

1. Run the embeddings on the calibration ids and stop at decoder layer 0, keeping its inputs: the hidden
   states and every keyword argument it receives (position embeddings, mask, position ids, ...).
2. For each decoder layer, alone on `device`: run the inputs through the uncompressed layer in
   `forward_dtype` while hooks feed each linear's inputs (fp32) to its compressor; compress every linear
   from the fp32 master weights; run the inputs again through the compressed layer: its outputs are the
   next layer's inputs. The layer then returns to its original device and dtype.

Compression errors thus compound the way they do at inference: layer k is calibrated on the outputs of
the already-compressed layers 0..k-1.

Each method is registered in `LAYER_COMPRESSORS` with the function that compresses one decoder layer:
`compress_layer` (one per-linear compressor of `COMPRESSORS` per linear, or per group of linears reading
the same input) for most, AWQ's own for AWQ, which scales and folds across a layer's linears.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from calib_assets.timing import span

from .attention import calibration_attention
from .awq import compress_layer_awq
from .config import MethodConfig, check_layer_compatible
from .gptq import GPTQ
from .layerwise import (
    LayerCompressor,
    LayerInputs,
    StopForward,
    advance,
    device_of,
    floating_state,
    leading_samples,
    load,
    on_device,
    run_layer,
    share_result_weights,
)
from .magnitude import Magnitude
from .packing import packed, unpacked
from .result import CompressedLinear
from .rtn import RTN
from .sparsegpt import SparseGPT
from .spqr import SpQR, recount_outliers
from .wanda import Wanda

CALIBRATION_PASSES = "compression: calibration forward passes"
METHOD_MATH = "compression: method math"

COMPRESSORS: dict[str, type] = {"rtn": RTN, "magnitude": Magnitude, "wanda": Wanda, "gptq": GPTQ,
                                "sparsegpt": SparseGPT, "spqr": SpQR}  # method -> per-linear compressor

Progress = Callable[[int, int, str], None]
# The module holding embed_tokens and the decoder layers (see _decoder): duck-typed, since nn.Module's
# __getattr__ is typed Tensor | Module.
Decoder = Any


def make_compressor(config: MethodConfig, layer: Any):
    """The per-linear compressor of `config`'s method for `layer` (an nn.Linear or a weight shape)."""
    return COMPRESSORS[config.method](config, layer)


def compressible_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Full name -> nn.Linear for every linear inside the decoder layers (not lm_head, not embeddings)."""
    decoder = _decoder(model)
    prefix = _prefix_of(model, decoder)
    return {
        f"{prefix}layers.{i}.{name}": module
        for i, layer in enumerate(decoder.layers)
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear)
    }


@torch.no_grad()
def compress_model(
    model: nn.Module,
    calibration_ids: torch.Tensor | None,
    config: MethodConfig,
    *,
    device: str | torch.device = "cpu",
    forward_dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 8,
    progress: Progress | None = None,
    release_memory: bool | None = None,
) -> dict[str, CompressedLinear]:
    """Compress every linear of the decoder layers in place; return full module name -> result.

    The model may be held in fp32 or in a 16-bit dtype: each layer is compressed from an fp32 copy and its
    results written back once, rounded to the model's dtype (see `share_result_weights`). Tunes the
    process's allocator first (`calib_assets.compute.reuse_freed_memory`); with `release_memory` (by
    default: when the model is held in a 16-bit dtype, the memory-saving setting), the freed memory goes
    back to the kernel before the first layer, after each phase of a layer and after each layer
    (`release_freed_memory`): a lower, steadier peak, for a round of page faults per phase."""
    from calib_assets.compute import release_freed_memory, reuse_freed_memory

    reuse_freed_memory()
    decoder = _decoder(model)
    if release_memory is None:
        release_memory = any(t.element_size() < 4 for t in floating_state(decoder.layers[0]).values())
    release = release_freed_memory if release_memory else lambda: None
    release()  # e.g. what loading the model left behind
    linears = compressible_linears(model)
    for name, linear in linears.items():
        check_layer_compatible(config, name, linear.in_features)
    if config.needs_calibration:
        _check_ids(calibration_ids, "calibration_ids")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")

    device = torch.device(device)
    prefix = _prefix_of(model, decoder)
    results: dict[str, CompressedLinear] = {}
    with _eval_mode(model), contextlib.ExitStack() as stack:
        inputs = None
        if config.needs_calibration:
            assert calibration_ids is not None  # checked by _check_ids above
            with span(CALIBRATION_PASSES):
                inputs = _capture_layer0_inputs(decoder, calibration_ids, device, forward_dtype, batch_size)
            stack.enter_context(calibration_attention(model))
        total = len(decoder.layers)
        groups = None  # linears sharing an input: found on layer 0, the same in every decoder layer
        layer_fn = LAYER_COMPRESSORS[config.method]
        for index, layer in enumerate(decoder.layers):
            layer_prefix = f"{prefix}layers.{index}"
            rerun = index < total - 1  # the last layer's outputs are not needed
            if groups is None and inputs is not None and config.row_independent:
                with on_device(layer, device, forward_dtype):
                    groups = _groups_sharing_input(layer, inputs)
            results.update(
                layer_fn(layer, layer_prefix, inputs, config, device, forward_dtype, rerun, groups, release=release)
            )
            release()
            if progress is not None:
                progress(index + 1, total, layer_prefix)
    return results


@torch.no_grad()
def layerwise_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    forward_dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
) -> torch.Tensor:
    """The engine's layer-by-layer pass without compression: the last layer's outputs (before the norm).
    Tunes the process's allocator as `compress_model` does, so that the two passes cost alike."""
    from calib_assets.compute import reuse_freed_memory

    reuse_freed_memory()
    _check_ids(input_ids, "input_ids")
    device = torch.device(device)
    decoder = _decoder(model)
    with _eval_mode(model):
        inputs = _capture_layer0_inputs(decoder, input_ids, device, forward_dtype, batch_size)
        with calibration_attention(model):
            for layer in decoder.layers:
                with on_device(layer, device, forward_dtype):
                    advance(layer, inputs)
    norm = _final_norm(decoder)
    out_device = norm.weight.device if norm is not None else torch.device("cpu")
    return torch.cat([hidden for hidden, _ in inputs]).to(out_device)


def compress_layer(
    layer: nn.Module,
    prefix: str,
    inputs: LayerInputs | None,
    config: MethodConfig,
    device: torch.device,
    forward_dtype: torch.dtype,
    rerun: bool,
    groups: list[list[str]] | None = None,
    release: Callable[[], object] = lambda: None,
) -> dict[str, CompressedLinear]:
    """Compress the linears of one decoder layer; advance `inputs` (in place) to the next layer's inputs.
    `release` runs after each phase (statistics, each group's compression), so that what one phase freed
    is handed back before the next allocates: the peak is that of the largest phase, not their sum.

    Linears that read the same input (q/k/v, gate/up) share one set of statistics and, for row-wise
    methods, are compressed as one row-stacked matrix: each output row is treated on its own, so the
    result is exactly that of compressing them one by one, at a fraction of the cost.

    With `true_sequential`, the groups are stages compressed one after the other in call order
    (q/k/v -> o -> gate/up -> down in a Llama layer): each stage's statistics come from a fresh run of
    the layer in which the earlier stages are already compressed.
    """
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    groups = groups or [[name] for name in linears]
    staged = inputs is not None and getattr(config, "true_sequential", False)
    stages = [[group] for group in groups] if staged else [groups]
    results: dict[str, CompressedLinear] = {}
    with on_device(layer, device, forward_dtype) as master:
        for stage in stages:
            compressors = {group[0]: _stacked_compressor(config, [linears[n] for n in group]) for group in stage}
            if inputs is not None:
                hooked = {name: linears[name] for name in compressors}
                with span(CALIBRATION_PASSES):
                    _collect_statistics(layer, hooked, compressors, inputs, prefix)
                release()
            for group in stage:
                with span(METHOD_MATH):
                    results.update(_compress_group(compressors.pop(group[0]), group, master, prefix))
                release()
            load(layer, master, device, forward_dtype)  # the next stage (or rerun) sees this one compressed
        if inputs is not None and rerun:
            with span(CALIBRATION_PASSES):
                advance(layer, inputs)
    share_result_weights(layer, prefix, results, on_rounded=recount_outliers)
    return results


LAYER_COMPRESSORS: dict[str, LayerCompressor] = {
    **{method: compress_layer for method in COMPRESSORS},
    "awq": compress_layer_awq,  # AWQ scales and folds across the linears of a layer
}  # method -> the function that compresses one decoder layer


def _compress_group(compressor, group: list[str], master: dict[str, torch.Tensor], prefix: str):
    """Compress the row-stacked weights of `group`; write them into `master`; name -> result (on CPU)."""
    names = ", ".join(f"{prefix}.{name}" for name in group)
    weights = [master[f"{name}.weight"] for name in group]
    try:
        stacked = compressor.compress(torch.cat(weights))
    except (ValueError, RuntimeError, FloatingPointError) as error:
        raise type(error)(f"{names}: {error}") from error
    results = {}
    for name, result in zip(group, _split_rows(stacked, [w.shape[0] for w in weights])):
        master[f"{name}.weight"] = result.weight
        results[f"{prefix}.{name}"] = result.to("cpu")
    return results


def _stacked_compressor(config: MethodConfig, linears: list[nn.Linear]):
    rows = sum(linear.out_features for linear in linears)
    return make_compressor(config, (rows, linears[0].in_features))


def _split_rows(result: CompressedLinear, rows: list[int]) -> list[CompressedLinear]:
    if len(rows) == 1:
        return [result]
    if result.second_level is not None:  # SpQR's second-level runs span rows: it is never row-stacked
        raise ValueError("a result with second-level statistics cannot be split by rows")
    weights = result.weight.split(rows)
    pieces = {"codes": unpacked(result.packed_codes), "scales": result.scales, "zeros": result.zeros,
              "mask": unpacked(result.packed_mask)}
    split = {field: (t.split(rows) if t is not None else [None] * len(rows)) for field, t in pieces.items()}
    return [
        dataclasses.replace(result, info=dict(result.info), weight=weights[i],
                            packed_codes=packed(split["codes"][i]), scales=split["scales"][i],
                            zeros=split["zeros"][i], packed_mask=packed(split["mask"][i]))
        for i in range(len(rows))
    ]


def _groups_sharing_input(layer: nn.Module, inputs: LayerInputs) -> list[list[str]]:
    """Linears grouped by the input tensor they receive, in call order, seen on one calibration window."""
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    hidden, kwargs = inputs[0]
    seen: dict[str, torch.Tensor] = {}  # holding the tensors keeps their ids from being reused

    def hook(name):
        def record(module, args):
            seen.setdefault(name, args[0])

        return record

    handles = [linear.register_forward_pre_hook(hook(name)) for name, linear in linears.items()]
    try:
        run_layer(layer, [(hidden[:1], leading_samples(kwargs, hidden.shape[0], 1))])
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[int, list[str]] = {}
    for name in [*seen, *(n for n in linears if n not in seen)]:  # call order, then never-called linears
        groups.setdefault(id(seen[name]) if name in seen else id(linears[name]), []).append(name)
    return list(groups.values())


def _collect_statistics(layer, linears, compressors, inputs: LayerInputs, prefix: str) -> None:
    """Feed each hooked linear's inputs to its compressor.

    Each batch's forward stops as soon as every hooked linear has received its input: what runs after
    (the last linear's own matmul, the residual add) feeds no statistic. In a Llama layer this skips
    down_proj, about a fifth of the layer's work, in every statistics pass.
    """
    pending: set[str] = set()

    def hook(name):
        def feed(module, args):
            try:
                compressors[name].add_batch(args[0].detach())
            except (ValueError, RuntimeError, FloatingPointError) as error:
                raise type(error)(f"{prefix}.{name}: {error}") from error
            pending.discard(name)
            if not pending:
                raise StopForward

        return feed

    handles = [linears[name].register_forward_pre_hook(hook(name)) for name in linears]
    try:
        for hidden, kwargs in inputs:
            pending.update(linears)
            try:
                layer(hidden, **kwargs)
            except StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()


FRONT_MODULES = ("embed_tokens", "embed_positions", "project_in", "rotary_emb")  # run before layer 0


def _capture_layer0_inputs(
    decoder: Decoder, input_ids: torch.Tensor, device: torch.device, forward_dtype: torch.dtype, batch_size: int
) -> LayerInputs:
    captured: LayerInputs = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.to(forward_dtype), kwargs))  # OPT adds fp32 position embeddings
        raise StopForward

    # The embeddings' output is cast, so the rotary cos/sin and any float mask are built in forward_dtype too.
    cast = decoder.embed_tokens.register_forward_hook(lambda m, i, out: out.to(forward_dtype))
    grab_handle = decoder.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    front = [m for m in (getattr(decoder, name, None) for name in FRONT_MODULES) if m is not None]
    homes = [device_of(m) for m in front]
    try:
        for m in front:
            m.to(device)
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            try:
                decoder(input_ids=batch, use_cache=False)
            except StopForward:
                pass
    finally:
        cast.remove()
        grab_handle.remove()
        for m, home in zip(front, homes):
            if home is not None:
                m.to(home)
    return captured


def _decoder(model: nn.Module) -> Decoder:
    """The module holding embed_tokens and the decoder layers: model.model (Llama, Mistral, Qwen...),
    model.model.decoder (OPT) or the model itself (a bare decoder)."""
    inner = getattr(model, "model", None)
    for candidate in (getattr(inner, "decoder", None), inner, model):
        if candidate is not None and all(hasattr(candidate, attr) for attr in ("embed_tokens", "layers")):
            return candidate
    raise ValueError(f"{type(model).__name__} is not a supported decoder-only model: expected embed_tokens and "
                     f"layers in model.model (Llama-style) or model.model.decoder (OPT-style)")


def _prefix_of(model: nn.Module, decoder: Decoder) -> str:
    name = next(name for name, module in model.named_modules() if module is decoder)
    return f"{name}." if name else ""


def _final_norm(decoder: Decoder) -> Any:  # a norm layer, or None
    return getattr(decoder, "norm", None) or getattr(decoder, "final_layer_norm", None)


def _check_ids(ids: torch.Tensor | None, what: str) -> None:
    if ids is None:
        raise ValueError(f"{what} is required for this method (got None)")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what} must be an integer tensor [n, seq_len], got {getattr(ids, 'shape', ids)!r}")
    if ids.shape[0] == 0:
        raise ValueError(f"{what} is empty")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
