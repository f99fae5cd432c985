"""compressed-tensors' `pack-quantized` layout of integer weight quantization (the format llm-compressor writes
and vLLM and transformers load for GPTQ/AWQ-style weight-only models), from our results, with torch alone.

Our codes c in 0..2^b - 1 dequantize as (c - z) * s; the format's signed codes q = c - 2^(b-1) and zero points
zp = z - 2^(b-1) dequantize as (q - zp) * s, the same numbers. Per quantized linear `<name>`:
- `<name>.weight_packed` int32 [rows, ceil(cols * b / 32)]: each row's q + 2^(b-1) (that is: c) as one bit
  stream, code j at bits j*b .. j*b + b - 1 of the row, least significant bit first, in 32-bit words;
- `<name>.weight_scale` [rows, groups]: the checkpoint's own fp32 scales (a loader casts them to its dtype);
- `<name>.weight_zero_point` int32 [ceil(rows * b / 32), groups] (asymmetric schemes only): zp packed the
  same way down each column; a symmetric scheme's zero point is 0 (z = 2^(b-1)) and not stored;
- `<name>.weight_shape` int64 [2].
Columns grouped out of order (GPTQ's act-order without static groups: a g_idx) are not expressible: the
format dropped `actorder: group` (compressed-tensors 0.20); act-order with static groups is (`actorder: weight`).
"""

from __future__ import annotations

from typing import Any

import torch

from .packing import pack_codes
from .result import CompressedLinear

FORMAT = "pack-quantized"
BITS = range(1, 9)  # what the format's packer accepts (our methods quantize to 2..8)
EXPRESSIBLE = "integer weights of 1-8 bits on a per-group or per-channel grid, symmetric or with zero points"


class NotExpressible(ValueError):
    """A result or method whose weights the pack-quantized format cannot hold."""


def weight_scheme(name: str, result: CompressedLinear, symmetric: bool, act_order: bool) -> dict[str, Any]:
    """The format's `weights` quantization arguments of one result of a method with these settings;
    NotExpressible naming why not."""
    if result.second_level is not None:
        raise NotExpressible(f"layer {name!r}: quantized statistics (SpQR's second level) are not {EXPRESSIBLE}")
    if result.pruned:
        raise NotExpressible(f"layer {name!r}: pruned and quantized weights are not {EXPRESSIBLE}")
    if result.info.get("outliers"):
        raise NotExpressible(f"layer {name!r}: {result.info['outliers']} full-precision outliers are not "
                             f"{EXPRESSIBLE}")
    if result.g_idx is not None:
        raise NotExpressible(f"layer {name!r}: act-order groups out of column order (a g_idx) are no longer "
                             f"part of the format, which holds {EXPRESSIBLE} in column order (GPTQ: act_order "
                             "with static_groups)")
    bits = result.bits
    if bits is None or bits not in BITS or result.scales is None or result.zeros is None:
        raise NotExpressible(f"layer {name!r}: bits={bits!r}; the format holds {EXPRESSIBLE}")
    zeros, maxq = result.zeros.float(), 2**bits - 1
    if symmetric and not bool((zeros == 2 ** (bits - 1)).all()):
        raise NotExpressible(f"layer {name!r}: a symmetric scheme's zero points must all be {2 ** (bits - 1)}")
    if not bool((zeros == zeros.round()).all() and (zeros >= 0).all() and (zeros <= maxq).all()):
        raise NotExpressible(f"layer {name!r}: zero points that are not integers in 0..{maxq} are not {EXPRESSIBLE}")
    cols = result.weight.shape[1]
    grouped = result.group_size is not None and result.group_size < cols
    return {"num_bits": bits, "type": "int", "symmetric": symmetric,
            "strategy": "group" if grouped else "channel", "group_size": result.group_size if grouped else None,
            "actorder": "weight" if act_order else None, "dynamic": False, "observer": "minmax",
            "observer_kwargs": {}, "block_structure": None}


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [rows, ceil(cols * bits / 32)]: each row of non-negative integers values [rows, cols] as its own
    bit stream (value j at bits j*bits .., least significant first), word k = bits 32k .. 32k + 31."""
    rows, cols = values.shape
    padded = torch.nn.functional.pad(values.to(torch.uint8), (0, (-cols) % 32))  # 32 codes = `bits` whole words
    stream = pack_codes(padded, bits).view(rows, -1, 4).to(torch.int64)  # rows of little-endian 4-byte words
    words = (stream << torch.tensor([0, 8, 16, 24])).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # the same 32 bits, as a signed int32
    return words[:, : -(-cols * bits // 32)].to(torch.int32).contiguous()


def packed_tensors(name: str, result: CompressedLinear, scheme: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The format's tensors of one result (`weight_scheme` first: it checks what this relies on)."""
    assert result.scales is not None and result.zeros is not None and result.bits is not None
    bits, codes = result.bits, result.unpacked_codes()
    assert codes is not None  # a quantized result
    tensors = {f"{name}.weight_packed": pack_rows(codes, bits),
               f"{name}.weight_scale": result.scales.float().contiguous(),
               f"{name}.weight_shape": torch.tensor(list(codes.shape), dtype=torch.int64)}
    if not scheme["symmetric"]:
        # zp + 2^(b-1) = z, packed like the codes but down each column
        tensors[f"{name}.weight_zero_point"] = pack_rows(result.zeros.round().to(torch.uint8).T, bits).T.contiguous()
    return tensors


def quantization_config(scheme: dict[str, Any], ignore: list[str]) -> dict[str, Any]:
    """config.json's `quantization_config`: one scheme for every Linear but those in `ignore`."""
    return {
        "quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": scheme, "input_activations": None,
                                      "output_activations": None, "format": FORMAT}},
        "ignore": sorted(ignore), "kv_cache_scheme": None, "sparsity_config": {}, "transform_config": {},
        "global_compression_ratio": None,
    }
