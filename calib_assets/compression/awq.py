"""AWQ (Lin et al., 2024): activation-aware weight quantization, one decoder layer at a time.

A weight column that multiplies a large activation matters more. AWQ scales input channel j of a group of
linears by s_j > 1 where the activations are large, and folds 1/s_j into the op that produces those
activations, so the full-precision function is unchanged while the quantization grid of the scaled
weights favours the salient channels. Per decoder layer (Llama layout, `LLAMA_SCALE_GROUPS`):
1. Run the calibration inputs through the layer and record, per scale group, the inputs of the module
   whose output error is measured (the attention, o_proj, the MLP, down_proj) and mean|x| per channel.
2. For a in {0, 1/n_grid, ..., (n_grid-1)/n_grid}: s = mean|x|^a (clamped at 1e-4), normalised by
   sqrt(max(s) min(s)); quantize W s with the group quantizer, run the module with Q(W s) / s and keep
   the s of least mean squared output error. a = 0 is plain RTN, so the search never does worse than RTN
   on the calibration data. With `search_samples` the attention and MLP trials run on the first that
   many calibration samples (on a CPU each trial costs a forward of the block over every token). All
   groups are searched on the full-precision layer. Where the inspected module is the lone linear itself
   (o_proj, down_proj) its output error is the quadratic form sum(D G D^T) / (tokens rows) with
   D = Q(W s) / s - W and G = X^T X, accumulated once in fp32: the same number as running the linear,
   exact, at a cost that does not grow with the calibration tokens.
3. Fold: the previous op's output channels (a norm's weight, or a linear's rows) get 1/s, the linears'
   input columns get s. v_proj -> o_proj is skipped when the shapes differ (grouped-query attention).
4. Clip (not q_proj/k_proj, whose error the q.k product hides): per group of `group_size` columns and per
   row, shrink the range to max|w| (1 - k / clip_grid), k < max_shrink * clip_grid, keeping the range of
   least output error of that group's partial product, all shrink steps at once, each error computed
   from the group's block of G (the reference measures it on 512 sampled tokens to save time; the
   quadratic form uses every calibration token for less).
5. Quantize the clipped weights with the min/max quantizer (RTN) -> codes, scales, zeros.
Unlike the reference (which calibrates every layer on full-precision outputs), the next layer's inputs
are the outputs of this layer once quantized, as in the rest of the engine.

Besides one CompressedLinear per linear, `compress_layer_awq` returns the folded norm weights as
`ExtraTensor`s keyed by full parameter name ("model.layers.0.input_layernorm.weight"); a checkpoint stores
them in its extra-tensor section and `apply_checkpoint` writes them back. (A folded previous linear is
itself quantized afterwards, so its CompressedLinear already holds the fold.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..compute import fp32_matmuls_on_bf16_units, on_bf16_units
from .config import AWQConfig, check_finite
from .layerwise import advance, leading_samples, load, on_device, run_layer, share_result_weights
from .quantizer import fit_params, quantize_grouped, quantized_linear
from .result import CompressedLinear, ExtraTensor

CLIP_ELEMENTS = 1 << 23  # trial weights (shrink steps x rows x cols) held at once by the clip search
NO_CLIP = ("q_proj", "k_proj")


@dataclass(frozen=True)
class ScaleGroup:
    prev: str  # the op producing the shared input: a norm (its weight gets 1/s) or a linear (its rows do)
    linears: tuple[str, ...]  # the linears reading it (their columns get s)
    inspect: str  # the module whose output error the scale search minimises


LLAMA_SCALE_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)


def scale_groups(layer: nn.Module) -> list[ScaleGroup]:
    """The groups of `LLAMA_SCALE_GROUPS` this layer has, with matching widths (else skipped)."""
    modules = dict(layer.named_modules())
    found = []
    for group in LLAMA_SCALE_GROUPS:
        if not all(name in modules for name in (group.prev, group.inspect, *group.linears)):
            continue
        prev = modules[group.prev]
        width = prev.out_features if isinstance(prev, nn.Linear) else getattr(prev, "weight", torch.empty(0)).shape[0]
        if all(modules[name].in_features == width for name in group.linears):
            found.append(group)
    return found


@torch.no_grad()
def fold_scale(tensors: dict[str, torch.Tensor], group: ScaleGroup, s: torch.Tensor) -> None:
    """In place on name -> tensor (a layer's parameters or the engine's master copy): prev op's output
    channels / s, the linears' input columns * s. The full-precision function is unchanged."""
    prev = tensors[f"{group.prev}.weight"]
    prev.div_(s if prev.dim() == 1 else s[:, None])
    if tensors.get(f"{group.prev}.bias") is not None:
        tensors[f"{group.prev}.bias"].div_(s)
    for name in group.linears:
        tensors[f"{name}.weight"].mul_(s[None, :])


def fake_quantize(w: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """Round trip of w [..., cols] through the min/max group quantizer: what RTN gives, bit for bit
    (quantize and dequantize inlined: the same arithmetic without the uint8 codes)."""
    flat = w.reshape(-1, config.group_size or w.shape[-1])
    scale, zero = fit_params(flat, config.bits, config.symmetric)
    scale, zero = scale[:, None], zero[:, None]
    codes = flat.float().div(scale).round_().add_(zero).clamp_(0, 2**config.bits - 1)
    return codes.sub_(zero).mul_(scale).view(w.shape)


def output_error(delta: torch.Tensor, gram: torch.Tensor, tokens: int) -> float:
    """mean((X delta^T)^2) over tokens and rows, from G = X^T X [cols, cols] of those tokens."""
    return float(((delta @ gram) * delta).sum()) / max(tokens * delta.shape[0], 1)


def search_scale(
    x_mean: torch.Tensor, weights: Sequence[torch.Tensor], loss_of: Callable[[list[torch.Tensor]], float],
    config: AWQConfig,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The s = x_mean^a (a on the grid) minimising `loss_of([Q(W s) / s for W in weights])`."""
    x_mean = x_mean.float()
    best: tuple[float, float, torch.Tensor] | None = None
    for k in range(config.n_grid):
        ratio = k / config.n_grid
        s = x_mean.pow(ratio).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = loss_of([fake_quantize(w.float() * s, config) / s for w in weights])
        if loss == loss and (best is None or loss < best[0]):  # NaN never wins
            best = (loss, ratio, s)
    if best is None:
        raise FloatingPointError("AWQ scale search: the output error is NaN for every ratio")
    loss, ratio, s = best
    return s, {"awq_ratio": ratio, "awq_loss": loss}


def search_clip(w: torch.Tensor, x: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """Per row and group, the range max|w| (1 - k / clip_grid) whose quantized group's partial product
    with x [tokens, cols] is closest in mean square -> [rows, groups]."""
    x = x.reshape(-1, w.shape[1]).float()
    return search_clip_gram(w, group_grams(x.T @ x, config.group_size or w.shape[1]), config)


def group_grams(gram: torch.Tensor, step: int) -> torch.Tensor:
    """The diagonal blocks [groups, step, step] of G = X^T X: each group's own Gram matrix."""
    groups = gram.shape[0] // step
    return torch.stack([gram[g * step : (g + 1) * step, g * step : (g + 1) * step] for g in range(groups)])


def search_clip_gram(w: torch.Tensor, grams: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """`search_clip` with each group's input statistics given as its Gram matrix (`group_grams`); every
    shrink step is tried at once. Ties go to the least shrink."""
    rows, cols = w.shape
    step = config.group_size or cols
    groups = cols // step
    wg = w.float().view(rows, groups, step)
    org_max = wg.abs().amax(dim=-1)  # [rows, groups]
    steps = max(1, int(config.max_shrink * config.clip_grid))
    shrink = torch.tensor([1 - k / config.clip_grid for k in range(steps)], device=w.device)
    grams = grams.to(w.device, torch.float32)
    chunk = max(1, CLIP_ELEMENTS // (steps * cols))
    best = []
    for r in range(0, rows, chunk):
        part = wg[r : r + chunk]  # [rows', groups, step]
        max_val = shrink[:, None, None] * org_max[r : r + chunk]  # [steps, rows', groups]
        bound = max_val[..., None]
        trial = fake_quantize(torch.maximum(torch.minimum(part, bound), -bound), config)
        delta = (trial - part).permute(2, 0, 1, 3).reshape(groups, -1, step)  # [groups, steps * rows', step]
        err = (torch.bmm(delta, grams) * delta).sum(dim=-1).view(groups, steps, -1)  # [groups, steps, rows']
        choice = err.argmin(dim=1).T  # [rows', groups]: the first (least shrink) of the least errors
        best.append(max_val.gather(0, choice[None]).squeeze(0))
    return torch.cat(best)


def quantize_clipped(w: torch.Tensor, max_val: torch.Tensor | None, config: AWQConfig,
                     info: dict) -> CompressedLinear:
    """RTN of w with each group's weights first clamped to [-max_val, max_val] (max_val [rows, groups])."""
    w = w.float()
    if max_val is not None:
        step = config.group_size or w.shape[1]
        bound = max_val.repeat_interleave(step, dim=1)
        w = torch.maximum(torch.minimum(w, bound), -bound)
    codes, scales, zeros = quantize_grouped(w, config.bits, config.group_size, config.symmetric)
    return quantized_linear(codes, scales, zeros, config.bits, config.group_size, info)


def awq_linear(w: torch.Tensor, x: torch.Tensor, config: AWQConfig) -> tuple[CompressedLinear, torch.Tensor]:
    """AWQ of one lone linear on inputs x [tokens, cols]: (result for W s, s). Its input must be x / s
    (fold 1/s into whatever produces x); result.weight / s is the effective weight on x."""
    w, x = w.float(), x.reshape(-1, w.shape[1]).float()
    gram = x.T @ x
    s, info = search_scale(x.abs().mean(dim=0), [w], lambda trial: output_error(trial[0] - w, gram, x.shape[0]),
                           config)
    scaled = w * s
    step = config.group_size or w.shape[1]
    max_val = search_clip_gram(scaled, group_grams(gram / torch.outer(s, s), step), config) if config.clip else None
    return quantize_clipped(scaled, max_val, config, info), s


class _Recorder:
    """Forward pre-hooks: inputs of the inspected modules (per batch), and per linear the token count,
    sum |x| and G = X^T X (fp32) of its input; linears reading the same tensor (q/k/v, gate/up) share them."""

    def __init__(self, layer: nn.Module, inspect: list[str]):
        self.calls: dict[str, list[tuple[tuple, dict]]] = {name: [] for name in inspect}
        self.abs_sum: dict[str, torch.Tensor] = {}
        self.gram: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.reads_as: dict[str, str] = {}  # linear -> the linear whose statistics it shares
        self._last: tuple[torch.Tensor | None, str] = (None, "")
        modules = dict(layer.named_modules())
        self.handles = [modules[name].register_forward_pre_hook(self._call(name), with_kwargs=True)
                        for name in inspect]
        self.handles += [m.register_forward_pre_hook(self._linear(name))
                         for name, m in modules.items() if isinstance(m, nn.Linear)]

    def _call(self, name):
        def hook(module, args, kwargs):
            self.calls[name].append((args, dict(kwargs)))

        return hook

    def _linear(self, name):
        def hook(module, args):
            if args[0] is self._last[0]:  # the tensor the previous linear read: same statistics
                self.reads_as.setdefault(name, self._last[1])
                return
            self._last = (args[0], name)
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            check_finite(f"input of {name}", x)
            self.abs_sum[name] = self.abs_sum.get(name, 0) + x.abs().sum(dim=0)
            with fp32_matmuls_on_bf16_units(on_bf16_units(args[0])):  # exact for a bf16 forward's inputs
                self.gram[name] = self.gram.get(name, 0) + x.T @ x
            self.tokens[name] = self.tokens.get(name, 0) + x.shape[0]

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self._last = (None, "")

    def source(self, name: str) -> str:
        return self.reads_as.get(name, name)

    def mean_abs(self, name: str) -> torch.Tensor:
        return self.abs_sum[self.source(name)] / self.tokens[self.source(name)]


def first_samples(calls: list[tuple[tuple, dict]], batches: list[int], limit: int | None) -> list[tuple[tuple, dict]]:
    """The recorded calls (one per batch, of `batches[i]` samples) cut to their first `limit` samples."""
    if limit is None:
        return calls
    kept = []
    for call, batch in zip(calls, batches):
        if limit <= 0:
            break
        kept.append(call if batch <= limit else leading_samples(call, batch, limit))
        limit -= batch
    return kept


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def compress_layer_awq(
    layer: nn.Module,
    prefix: str,
    inputs,
    config: AWQConfig,
    device: torch.device,
    forward_dtype: torch.dtype,
    rerun: bool,
    groups: Any = None,  # the engine's shared-input groups: unused, AWQ has its own `scale_groups`
    release: Callable[[], object] = lambda: None,
) -> dict[str, CompressedLinear]:
    """AWQ of one decoder layer, a `layerwise.LayerCompressor` (advances `inputs` in place when `rerun`;
    `release` after each group's search). Returns full linear name -> CompressedLinear, and full
    parameter name -> ExtraTensor for each folded norm weight (and bias)."""
    if inputs is None:
        raise ValueError("AWQ needs calibration inputs (got None)")
    start = time.perf_counter()
    modules = dict(layer.named_modules())
    linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    plan = scale_groups(layer)
    results: dict[str, CompressedLinear] = {}
    with on_device(layer, device, forward_dtype) as master:
        recorder = _Recorder(layer, [g.inspect for g in plan if g.inspect not in g.linears])
        try:
            run_layer(layer, inputs)
        finally:
            recorder.remove()

        found: list[tuple[ScaleGroup, torch.Tensor, dict]] = []
        batches = [hidden.shape[0] for hidden, _ in inputs]  # samples per recorded call
        for group in plan:  # every group searched on the full-precision layer
            try:
                s, info = _search_group(modules, master, group, recorder, config, device, forward_dtype, batches)
            except (ValueError, RuntimeError, FloatingPointError) as error:
                raise type(error)(f"{prefix}.{group.inspect}: {error}") from error
            found.append((group, s, info))
            release()
        scale_info: dict[str, dict] = {}
        grams = {name: recorder.gram[recorder.source(name)]
                 for name in linears if recorder.source(name) in recorder.gram}
        for group, s, info in found:
            fold_scale(master, group, s)
            for name in group.linears:
                grams[name] = grams[name] / torch.outer(s, s)  # what the linear reads once 1/s is folded upstream
                scale_info[name] = info

        for name in linears:
            w = master[f"{name}.weight"]
            check_finite(f"{prefix}.{name} weight", w)
            info = {**scale_info.get(name, {}), "tokens": recorder.tokens.get(recorder.source(name), 0)}
            clip = config.clip and name in grams and not name.split(".")[-1].startswith(NO_CLIP)
            step = config.group_size or w.shape[1]
            max_val = search_clip_gram(w, group_grams(grams[name], step), config) if clip else None
            if max_val is not None:
                org_max = w.abs().view(w.shape[0], -1, config.group_size or w.shape[1]).amax(dim=-1)
                info["clip_mean_ratio"] = float((max_val / org_max.clamp_min(1e-12)).mean())
            info["seconds"] = time.perf_counter() - start
            result = quantize_clipped(w, max_val, config, info)
            master[f"{name}.weight"] = result.weight
            results[f"{prefix}.{name}"] = result.to("cpu")
        for group, _, _ in found:
            if group.prev not in linears:  # a norm: its folded tensors leave the layer as extras
                for key in (f"{group.prev}.weight", f"{group.prev}.bias"):
                    if key in master:
                        results[f"{prefix}.{key}"] = ExtraTensor(weight=master[key].detach().cpu().clone(),
                                                                 info={"awq_folded": True})
        load(layer, master, device, forward_dtype)
        if rerun:
            advance(layer, inputs)
    share_result_weights(layer, prefix, results)
    return results


def _search_group(modules, master, group: ScaleGroup, recorder: _Recorder, config: AWQConfig,
                  device: torch.device, dtype: torch.dtype, batches: list[int]) -> tuple[torch.Tensor, dict]:
    """Scale search of one group: the inspected module run on its recorded inputs (one call per batch of
    `batches` samples; the first `config.search_samples` of them) with trial weights, or, where it is the
    group's lone linear, its output error from the input's Gram matrix."""
    weights = [master[f"{name}.weight"] for name in group.linears]
    x_mean = recorder.mean_abs(group.linears[0]).to(weights[0].device)
    if group.linears == (group.inspect,):
        source = recorder.source(group.inspect)
        gram, tokens = recorder.gram[source].to(weights[0].device), recorder.tokens[source]
        return search_scale(x_mean, weights, lambda trial: output_error(trial[0] - weights[0], gram, tokens), config)

    module = modules[group.inspect]
    calls = first_samples(recorder.calls[group.inspect], batches, config.search_samples)
    references = [_output(module(*args, **kwargs)).float() for args, kwargs in calls]

    def loss_of(trial: list[torch.Tensor]) -> float:
        for name, w in zip(group.linears, trial):
            modules[name].weight.data = w.to(device, dtype)
        total, count = 0.0, 0
        for (args, kwargs), reference in zip(calls, references):
            out = _output(module(*args, **kwargs)).float()
            total += float((out - reference).square().sum())
            count += out.numel()
        return total / max(count, 1)

    try:
        return search_scale(x_mean, weights, loss_of, config)
    finally:
        for name in group.linears:
            modules[name].weight.data = master[f"{name}.weight"].to(device, dtype)
