"""What a compressor produces, as plain data: `CompressedLinear` per linear, `ExtraTensor` for any other
tensor a method changed (AWQ's folded norms), `QuantizedStatistic` for SpQR's second-level statistics.

Codes and masks are held bit-packed (`packing.PackedTensor`); unpacking them is explicit
(`result.packed_codes.unpack()`), so that testing a field for None, moving or copying a result costs no
unpacking.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .packing import PackedTensor, unpacked

_Movable = TypeVar("_Movable", torch.Tensor, PackedTensor)


@dataclass
class QuantizedStatistic:
    """A per-(row, group) statistic [rows, groups] quantized on its own min/max grids (SpQR's second level).

    Each run of `groupsize` rows of a column group has one grid, whose scale and zero point are
    fp16-representable (held as fp32): value = (code - zero) * scale, see `quantizer.dequantize_statistic`.
    """

    codes: torch.Tensor  # uint8 [rows, groups], in 0..2^bits - 1
    grid: torch.Tensor  # fp32 [ceil(rows / groupsize), groups, 2]: (scale, zero) of each grid
    bits: int
    groupsize: int

    def to(self, device: torch.device | str) -> QuantizedStatistic:
        return dataclasses.replace(self, codes=self.codes.to(device), grid=self.grid.to(device))


@dataclass
class CompressedLinear:
    """What a compressor produced for one linear.

    `weight` is the dense effective weight: fp32 as a compressor returns it; the engine rounds it once to
    the model's dtype when the model is held in bf16 or fp16. When quantized, `dequantize(codes, scales,
    zeros, group_size, g_idx)`, cast to `weight`'s dtype, reproduces `weight` bit for bit (SpQR: except at
    its outliers); when pruned, the mask (True = kept) marks the kept entries. Codes and mask are held
    packed (`packed_codes`, `packed_mask`). SpQR holds no `scales` and `zeros` (None): its `second_level`
    codes and grids stand for them (`spqr.grid_statistics` dequantizes them).
    """

    weight: torch.Tensor
    packed_codes: PackedTensor | None = None  # uint8 [out, in]
    scales: torch.Tensor | None = None  # fp32 [out, groups]
    zeros: torch.Tensor | None = None  # fp32 [out, groups]
    bits: int | None = None
    group_size: int | None = None
    packed_mask: PackedTensor | None = None  # bool [out, in], True = kept
    g_idx: torch.Tensor | None = None  # int32 [in_features]: column -> group (act-order); None: j // group_size
    info: dict[str, Any] = field(default_factory=dict)
    # SpQR: `scales` and `zeros` are themselves quantized; their codes and grids (see QuantizedStatistic)
    second_level: dict[str, QuantizedStatistic] | None = None

    @property
    def quantized(self) -> bool:
        return self.packed_codes is not None

    @property
    def pruned(self) -> bool:
        return self.packed_mask is not None

    def unpacked_codes(self) -> torch.Tensor | None:
        """`packed_codes` unpacked (a fresh uint8 tensor), or None."""
        return unpacked(self.packed_codes)

    def unpacked_mask(self) -> torch.Tensor | None:
        """`packed_mask` unpacked (a fresh bool tensor), or None."""
        return unpacked(self.packed_mask)

    def to(self, device: torch.device | str) -> CompressedLinear:
        def move(t: _Movable | None) -> _Movable | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            weight=self.weight.to(device),
            g_idx=move(self.g_idx),
            packed_codes=move(self.packed_codes), scales=move(self.scales), zeros=move(self.zeros),
            packed_mask=move(self.packed_mask),
            second_level=None if self.second_level is None
            else {key: stat.to(device) for key, stat in self.second_level.items()},
        )


@dataclass
class ExtraTensor(CompressedLinear):
    """A full-precision tensor a method changed besides the linears' weights (e.g. AWQ's folded norm
    weights), keyed in a results dict by its full parameter name; only `weight` (any shape) and `info`."""


def held_precision(weight: torch.Tensor) -> torch.Tensor:
    """`weight` in the precision a result holds it: as is in fp32, bf16 or fp16 (a model held in a 16-bit
    dtype), else as fp32."""
    return weight if weight.dtype in (torch.float32, torch.bfloat16, torch.float16) else weight.float()
