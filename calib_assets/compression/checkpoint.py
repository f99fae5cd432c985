"""Compressed checkpoints: only the compressed linears, stored compactly, plus a manifest.

A checkpoint directory holds `tensors.safetensors` and `manifest.json`. The base model's other tensors
are not duplicated: the caller's manifest names the base model (its fingerprint), and `apply_checkpoint`
writes the linears into a freshly loaded copy of it. Per linear, under its full module name:
- quantized: `<name>.codes` (codes bit-packed into uint8), `<name>.scales`, `<name>.zeros`
  (uint8 when every zero point is an integer in 0..255, else fp32), and `<name>.g_idx` (int16, or int32
  past 32767 groups: each column's group) when the columns were grouped out of order (act-order);
- quantized with quantized statistics (SpQR), instead of scales/zeros: `<name>.scales.codes` and
  `<name>.zeros.codes` (bit-packed at their own bits) and `<name>.scales.grid`, `<name>.zeros.grid`
  (fp16 [runs, groups, 2]: each second-level grid's scale and zero point);
- pruned: `<name>.mask` (keep-mask, np.packbits order) and `<name>.values` (the kept weights);
- otherwise: `<name>.weight`.
- quantized weights that differ from their codes' grid (SpQR's outliers, counted in `info["outliers"]`),
  in compressed-row form: `<name>.outlier_counts` (per row), `<name>.outlier_cols` (column of each, row-major
  order; both int16 where the width allows, else int32) and `<name>.outlier_values` (fp16 when every value
  is an fp16 number, else fp32). (Format-1 checkpoints written before held `<name>.outlier_idx`, flat
  int32 indices, and fp32 values; they still load.)
Extra tensors (`ExtraTensor`, keyed by full parameter name: AWQ's folded norm weights) are stored as is
under `extra/<name>` (fp32) and listed in the manifest's `extra`; `apply_checkpoint` writes them back.
Weights and values are stored in the result's precision: fp32, or the model's bf16/fp16 when the model
was held in it during compression (its results' weights are then rounded once to it).
Loading reconstructs bit for bit the weights the method produced (a result held in bf16/fp16: once
written into a model of that dtype).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_dir, check_contents, read_json, sha256_files, write_json
from .magnitude import apply_mask
from .packing import PackedTensor, pack_codes, packed, unpack_codes
from .quantizer import dequantize, off_grid
from .result import CompressedLinear, ExtraTensor, QuantizedStatistic, held_precision
from .spqr import spqr_statistics

TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
EXTRA_PREFIX = "extra/"


def save_checkpoint(path: str | Path, compressed: dict[str, CompressedLinear], manifest: dict[str, Any]) -> dict:
    """Write the checkpoint atomically at `path`; return the final manifest (as written)."""
    from safetensors.torch import save_file

    if not compressed:
        raise ValueError("nothing to save: `compressed` is empty")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    extras = {name: c for name, c in compressed.items() if isinstance(c, ExtraTensor)}
    for name in sorted(extras):
        tensors[EXTRA_PREFIX + name] = extras[name].weight.detach().cpu().float().contiguous()
    for name in sorted(set(compressed) - set(extras)):
        stored, summary = _encode(name, compressed[name])
        tensors.update(stored)
        layers[name] = summary

    n_params = sum(layer["params"] for layer in layers.values())
    size_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    pruned = sum(layer["pruned"] for layer in layers.values())
    final = dict(manifest)
    with atomic_dir(Path(path)) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": "pt"})
        final.update(
            format_version=FORMAT_VERSION,
            tensors_file=TENSORS_FILE,
            layers=layers,
            n_params=n_params,
            size_bytes=size_bytes,
            file_bytes=(tmp / TENSORS_FILE).stat().st_size,
            bits_per_param=8 * size_bytes / n_params,
            sparsity=pruned / n_params,
            fingerprint=sha256_files([tmp / TENSORS_FILE]),
        )
        if extras:
            final["extra"] = {name: {"shape": list(extras[name].weight.shape), "info": dict(extras[name].info)}
                              for name in sorted(extras)}
        write_json(tmp / MANIFEST_FILE, final)
    return read_json(Path(path) / MANIFEST_FILE)


def load_checkpoint(path: str | Path, *, verify: bool = True) -> tuple[dict[str, CompressedLinear], dict]:
    """Read a checkpoint back: full module name -> CompressedLinear (on CPU), and the manifest."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest_path, tensors_path = path / MANIFEST_FILE, path / TENSORS_FILE
    if not manifest_path.is_file() or not tensors_path.is_file():
        raise FileNotFoundError(f"{path} is not a compressed checkpoint (needs {MANIFEST_FILE} and {TENSORS_FILE})")
    check_contents(path, f"checkpoint at {str(path)!r}", rebuild_hint="re-materialize its compressed_model partition")
    manifest = read_json(manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version={manifest.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    if verify and sha256_files([tensors_path]) != manifest["fingerprint"]:
        raise ValueError(f"{tensors_path} does not match the manifest's fingerprint: the checkpoint is corrupt")
    tensors = load_file(str(tensors_path))
    compressed = {name: _decode(name, summary, tensors) for name, summary in manifest["layers"].items()}
    for name, summary in manifest.get("extra", {}).items():
        compressed[name] = ExtraTensor(weight=tensors[EXTRA_PREFIX + name], info=summary.get("info", {}))
    return compressed, manifest


@torch.no_grad()
def apply_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Write the checkpoint's weights into `model` (same architecture as the base) in place; return the manifest."""
    compressed, manifest = load_checkpoint(path)
    apply_compressed(model, compressed)
    return manifest


@torch.no_grad()
def apply_compressed(model: nn.Module, compressed: dict[str, CompressedLinear]) -> None:
    """Write loaded results (`load_checkpoint`'s) into `model` in place."""
    modules = dict(model.named_modules())
    for name, result in compressed.items():
        if isinstance(result, ExtraTensor):
            _apply_extra(model, name, result)
            continue
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"checkpoint layer {name!r} is not a linear of this model")
        if tuple(module.weight.shape) != tuple(result.weight.shape):
            raise ValueError(
                f"checkpoint layer {name!r} has shape {tuple(result.weight.shape)}, "
                f"the model's has {tuple(module.weight.shape)}"
            )
        module.weight.data.copy_(result.weight)


def _apply_extra(model: nn.Module, name: str, extra: ExtraTensor) -> None:
    targets: dict[str, torch.Tensor] = dict(model.named_parameters())
    targets.update(model.named_buffers())
    target = targets.get(name)
    if target is None:
        raise ValueError(f"checkpoint tensor {name!r} is not a parameter or buffer of this model")
    if tuple(target.shape) != tuple(extra.weight.shape):
        raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(extra.weight.shape)}, "
                         f"the model's has {tuple(target.shape)}")
    target.data.copy_(extra.weight)


def _encode(name: str, c: CompressedLinear) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    weight = held_precision(c.weight.detach().cpu())
    rows, cols = weight.shape
    summary: dict[str, Any] = {"shape": [rows, cols], "params": rows * cols, "pruned": 0,
                               "info": dict(c.info)}
    stored: dict[str, torch.Tensor] = {}
    codes = None if c.packed_codes is None else c.packed_codes.unpack().cpu()
    mask = None if c.packed_mask is None else c.packed_mask.unpack().cpu().bool()
    if codes is not None:
        assert c.bits is not None  # a result with codes has their bit width
        stored[f"{name}.codes"] = pack_codes(codes, c.bits)
        if c.second_level is not None:
            stored.update(_second_level(name, c, summary))
        else:
            assert c.scales is not None and c.zeros is not None  # a grid without a second level is held
            zeros = c.zeros.detach().cpu().float()
            as_bytes = zeros.round().clamp(0, 255)
            compact = bool(torch.equal(as_bytes, zeros))
            stored[f"{name}.scales"] = c.scales.detach().cpu().float().contiguous()
            stored[f"{name}.zeros"] = (as_bytes.to(torch.uint8) if compact else zeros).contiguous()
        if c.g_idx is not None:
            stored[f"{name}.g_idx"] = c.g_idx.detach().to("cpu", _index_dtype(int(c.g_idx.max()) + 1), copy=True)
        summary.update(format="quantized", bits=c.bits, group_size=c.group_size)
        stored.update(_outliers(name, c, codes, mask, weight, stored, summary))
    if mask is not None:
        stored[f"{name}.mask"] = torch.from_numpy(np.packbits(mask.numpy().reshape(-1)))
        if codes is None:
            stored[f"{name}.values"] = weight[mask].contiguous()
            summary["format"] = "pruned"
        summary["pruned"] = int((~mask).sum())
    if not stored:
        stored[f"{name}.weight"] = weight.contiguous()
        summary["format"] = "dense"
    summary["bytes"] = sum(t.numel() * t.element_size() for t in stored.values())
    summary["sparsity"] = summary["pruned"] / summary["params"]
    return stored, summary


def _decode(name: str, summary: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CompressedLinear:
    rows, cols = summary["shape"]
    mask = None
    if f"{name}.mask" in tensors:
        bits = np.unpackbits(tensors[f"{name}.mask"].numpy(), count=rows * cols)
        mask = torch.from_numpy(bits.astype(bool)).reshape(rows, cols)
    if summary["format"] == "quantized":
        codes = unpack_codes(tensors[f"{name}.codes"], summary["bits"], rows * cols).reshape(rows, cols)
        second_level = None
        if "second_level" in summary:
            second_level = _decode_second_level(name, summary["second_level"], rows, tensors)
            scales, zeros = spqr_statistics(second_level)
        else:
            scales, zeros = tensors[f"{name}.scales"], tensors[f"{name}.zeros"].float()
        g_idx = tensors.get(f"{name}.g_idx")
        g_idx = None if g_idx is None else g_idx.to(torch.int32)
        weight = dequantize(codes, scales, zeros, summary["group_size"], g_idx)
        if mask is not None:
            weight = apply_mask(weight, mask)
        index = _outlier_index(name, tensors, cols)
        if index is not None:
            weight = weight.reshape(-1).index_put((index,), tensors[f"{name}.outlier_values"].float()).view(rows, cols)
        held = {} if second_level is not None else {"scales": scales, "zeros": zeros}  # SpQR: second_level
        stream = PackedTensor(tensors[f"{name}.codes"], codes.shape, codes.dtype, summary["bits"])  # as stored
        return CompressedLinear(weight=weight, packed_codes=stream, bits=summary["bits"],
                                group_size=summary["group_size"], packed_mask=packed(mask), g_idx=g_idx,
                                info=summary.get("info", {}), second_level=second_level, **held)
    if summary["format"] == "pruned":
        weight = torch.zeros(rows, cols, dtype=torch.float32)
        weight[mask] = tensors[f"{name}.values"].float()
        return CompressedLinear(weight=weight, packed_mask=packed(mask), info=summary.get("info", {}))
    if summary["format"] == "dense":
        return CompressedLinear(weight=tensors[f"{name}.weight"].float(), info=summary.get("info", {}))
    raise ValueError(f"layer {name!r}: unknown stored format {summary['format']!r}")


def _outliers(name: str, c: CompressedLinear, codes: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor,
              stored: dict[str, torch.Tensor], summary: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The entries where `weight` differs (bitwise) from what the stored codes give back, as (index, value);
    their number must be the result's declared `info["outliers"]` (0 unless the method keeps outliers)."""
    if c.second_level is not None:
        scales, zeros = spqr_statistics({key: stat.to("cpu") for key, stat in c.second_level.items()})
    else:
        scales, zeros = stored[f"{name}.scales"], stored[f"{name}.zeros"].float()
    differs = off_grid(weight, codes, scales, zeros, c.group_size, stored.get(f"{name}.g_idx"), mask).reshape(-1)
    count, declared = int(differs.sum()), int(c.info.get("outliers", 0))
    if count != declared:
        raise ValueError(f"layer {name!r}: the weight differs from its dequantized codes at {count} entries, "
                         f"but the result declares {declared} outliers")
    if not count:
        return {}
    rows, cols = weight.shape
    index = differs.nonzero().squeeze(1)  # row-major order
    values = weight.reshape(-1)[index].float().contiguous()
    as_fp16 = values.half()
    summary["outliers"] = count
    return {f"{name}.outlier_counts": differs.view(rows, cols).sum(dim=1).to(_index_dtype(cols + 1)),
            f"{name}.outlier_cols": (index % cols).to(_index_dtype(cols)),
            f"{name}.outlier_values": as_fp16 if torch.equal(as_fp16.float(), values) else values}


def _outlier_index(name: str, tensors: dict[str, torch.Tensor], cols: int) -> torch.Tensor | None:
    """Flat row-major indices of the stored outliers (either layout), or None."""
    if f"{name}.outlier_idx" in tensors:  # format 1 before compressed rows
        return tensors[f"{name}.outlier_idx"].long()
    if f"{name}.outlier_cols" not in tensors:
        return None
    counts = tensors[f"{name}.outlier_counts"].long()
    rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    return rows * cols + tensors[f"{name}.outlier_cols"].long()


def _index_dtype(bound: int) -> torch.dtype:
    """The narrowest of int16 / int32 / int64 holding 0..bound - 1."""
    return torch.int16 if bound <= 2**15 else torch.int32 if bound <= 2**31 else torch.int64


def _second_level(name: str, c: CompressedLinear, summary: dict[str, Any]) -> dict[str, torch.Tensor]:
    """SpQR's quantized statistics: packed codes and fp16 grids; they must give back `c.scales`/`c.zeros`
    where the result holds them."""
    assert c.second_level is not None  # called for results with a second level only
    levels = {key: stat.to("cpu") for key, stat in c.second_level.items()}
    for key, value in zip(("scales", "zeros"), spqr_statistics(levels)):
        held = getattr(c, key)  # None: SpQR's own results, which the second level reproduces by construction
        if held is not None and not torch.equal(value, held.detach().cpu().float()):
            raise ValueError(f"layer {name!r}: the second-level codes do not reproduce its {key}")
    stored = {}
    for key, stat in levels.items():
        grid16 = stat.grid.half()
        if not torch.equal(grid16.float(), stat.grid):
            raise ValueError(f"layer {name!r}: the second-level grids of its {key} are not fp16 numbers")
        stored[f"{name}.{key}.codes"] = pack_codes(stat.codes, stat.bits)
        stored[f"{name}.{key}.grid"] = grid16.contiguous()
    summary["second_level"] = {key: {"bits": stat.bits, "groupsize": stat.groupsize, "groups": stat.codes.shape[1]}
                               for key, stat in levels.items()}
    return stored


def _decode_second_level(name: str, layout: dict[str, dict], rows: int,
                         tensors: dict[str, torch.Tensor]) -> dict[str, QuantizedStatistic]:
    levels = {}
    for key, spec in layout.items():
        codes = unpack_codes(tensors[f"{name}.{key}.codes"], spec["bits"], rows * spec["groups"])
        levels[key] = QuantizedStatistic(codes=codes.reshape(rows, spec["groups"]),
                                         grid=tensors[f"{name}.{key}.grid"].float(), bits=spec["bits"],
                                         groupsize=spec["groupsize"])
    return levels
