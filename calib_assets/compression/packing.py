"""Bit-packing of small integer tensors (quantization codes, keep-masks).

A checkpoint stores its codes this way, and a `CompressedLinear` holds its codes and mask packed in memory
(`PackedTensor`): the codes of a 3-bit model take 3/8 of the bytes of uint8 ones, a mask 1/8 of a bool one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

_CHUNK = 1 << 20  # codes per chunk (a multiple of 8): bounds the int64 working memory at 8 MB


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes of `bits` bits (1..8) into a flat uint8 bitstream, least significant bit first:
    code k holds bits k*bits .. k*bits + bits - 1 of the stream, byte i its bits 8i .. 8i + 7."""
    _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and flat.dtype != torch.bool:  # a bool is 0 or 1
        low, high = (int(v) for v in torch.aminmax(flat))
        if low < 0 or high >= 2**bits:
            raise ValueError(f"codes out of range for {bits} bits: [{low}, {high}]")
    if bits == 1 and flat.device.type == "cpu":  # masks: numpy's bit packer, same layout, ~100x faster
        return torch.from_numpy(np.packbits(flat.numpy().astype(np.bool_, copy=False), bitorder="little"))
    chunks = [_pack_chunk(flat[i : i + _CHUNK], bits) for i in range(0, flat.numel(), _CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8, device=codes.device)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `numel` codes, as a flat uint8 tensor."""
    _check_bits(bits)
    packed = packed.reshape(-1)
    if packed.numel() * 8 < numel * bits:
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {numel} codes of {bits} bits")
    if bits == 1 and packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=numel, bitorder="little"))
    step = _CHUNK * bits // 8  # bytes per full chunk
    chunks = []
    for start in range(0, numel, _CHUNK):
        count = min(_CHUNK, numel - start)
        offset = start * bits // 8
        chunks.append(_unpack_chunk(packed[offset : offset + step], bits, count))
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8, device=packed.device)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r} is out of range; allowed: 1..8")


# Eight codes of b bits fill exactly b bytes: each run of eight codes is one integer word of 8b <= 64 bits.


def _pack_chunk(flat: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return flat.to(torch.uint8)
    count = flat.numel()
    words = torch.nn.functional.pad(flat.to(torch.int64), (0, (-count) % 8)).reshape(-1, 8)
    words = (words << _shifts(8, bits, flat.device)).sum(dim=1)  # disjoint bit fields: the sum is their OR
    stream = (words[:, None] >> _shifts(bits, 8, flat.device)) & 0xFF
    return stream.to(torch.uint8).reshape(-1)[: (count * bits + 7) // 8]


def _unpack_chunk(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    if bits == 8:
        return packed[:count].to(torch.uint8)
    stream = torch.nn.functional.pad(packed.to(torch.int64), (0, (-packed.numel()) % bits)).reshape(-1, bits)
    words = (stream << _shifts(bits, 8, packed.device)).sum(dim=1)
    codes = (words[:, None] >> _shifts(8, bits, packed.device)) & (2**bits - 1)
    return codes.to(torch.uint8).reshape(-1)[:count]


def _shifts(count: int, step: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, count * step, step, dtype=torch.int64, device=device)


@dataclasses.dataclass(frozen=True)
class PackedTensor:
    """A tensor of small non-negative integers (or bools) as a `pack_codes` bitstream of `bits` bits per
    value (`pack`: the fewest bits that hold its largest value). `unpack` gives a fresh tensor."""

    data: torch.Tensor  # uint8 bitstream
    shape: torch.Size
    dtype: torch.dtype
    bits: int

    @classmethod
    def pack(cls, tensor: torch.Tensor) -> PackedTensor:
        if tensor.is_floating_point() or tensor.is_complex():
            raise ValueError(f"only integer or bool tensors can be bit-packed, got {tensor.dtype}")
        high = int(tensor.max()) if tensor.numel() and tensor.dtype != torch.bool else 1
        bits = max(1, high.bit_length())
        return cls(pack_codes(tensor, bits), tensor.shape, tensor.dtype, bits)

    def unpack(self) -> torch.Tensor:
        return unpack_codes(self.data, self.bits, self.shape.numel()).reshape(self.shape).to(self.dtype)

    def to(self, device: torch.device | str) -> PackedTensor:
        return dataclasses.replace(self, data=self.data.to(device))


def packed(tensor: torch.Tensor | None) -> PackedTensor | None:
    """`PackedTensor.pack(tensor)`, or None for None."""
    return None if tensor is None else PackedTensor.pack(tensor)


def unpacked(value: PackedTensor | None) -> torch.Tensor | None:
    """`value.unpack()`, or None for None."""
    return None if value is None else value.unpack()
