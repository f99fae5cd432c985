"""Quantizer, bit packing and RTN against brute-force truths."""

import dataclasses

import numpy as np
import pytest
import torch

from calib_assets.compression import RTN, Magnitude, MagnitudeConfig, RTNConfig
from calib_assets.compression.packing import PackedTensor, pack_codes, unpack_codes
from calib_assets.compression.quantizer import dequantize


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [1, 7, 8, 1001])
def test_pack_unpack_round_trip(bits, numel):
    gen = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2**bits, (numel,), generator=gen, dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (numel * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, numel), codes.to(torch.uint8))


def test_pack_layout_matches_python_bitstring():
    codes = torch.tensor([5, 0, 7, 2, 1, 6])
    bits = 3
    stream = "".join(format(int(c), "03b")[::-1] for c in codes)  # least significant bit first
    stream += "0" * (-len(stream) % 8)
    expected = [int(stream[i : i + 8][::-1], 2) for i in range(0, len(stream), 8)]
    assert pack_codes(codes, bits).tolist() == expected


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_pack_matches_numpy_little_endian_packbits_across_chunks(bits):
    numel = (1 << 20) + 13  # past one chunk of the packer
    codes = torch.randint(0, 2**bits, (numel,), generator=torch.Generator().manual_seed(bits), dtype=torch.int64)
    stream = ((codes.numpy()[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    expected = np.packbits(stream, bitorder="little")
    assert np.array_equal(pack_codes(codes, bits).numpy(), expected)
    assert torch.equal(unpack_codes(torch.from_numpy(expected), bits, numel), codes.to(torch.uint8))


@pytest.mark.parametrize("numel", [1, 8, 1001, (1 << 20) + 13])
def test_one_bit_codes_by_numpy_equal_the_torch_packer(numel):
    """Masks are packed on the CPU by numpy's packbits; the torch path (used on accelerators) is the plain version."""
    from calib_assets.compression.packing import _pack_chunk, _unpack_chunk

    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = pack_codes(mask, 1)
    chunks = [_pack_chunk(mask[i : i + (1 << 20)], 1) for i in range(0, numel, 1 << 20)]
    assert torch.equal(packed, torch.cat(chunks))
    chunk_bytes = (1 << 20) // 8
    plain = [_unpack_chunk(packed[i // 8 : i // 8 + chunk_bytes], 1, min(1 << 20, numel - i))
             for i in range(0, numel, 1 << 20)]
    assert torch.equal(unpack_codes(packed, 1, numel), torch.cat(plain))


def test_packed_tensor_uses_the_fewest_bits_and_restores_dtype_and_shape():
    mask = torch.rand(37, 11, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = PackedTensor.pack(mask)
    assert (packed.bits, packed.data.numel()) == (1, -(-mask.numel() // 8))
    assert packed.unpack().dtype == torch.bool and torch.equal(packed.unpack(), mask)
    codes = torch.tensor([[0, 5], [2, 1]], dtype=torch.uint8)
    assert PackedTensor.pack(codes).bits == 3 and torch.equal(PackedTensor.pack(codes).unpack(), codes)
    with pytest.raises(ValueError, match="integer or bool"):
        PackedTensor.pack(torch.zeros(3))


def test_results_hold_codes_and_masks_bit_packed():
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    quantized = RTN(RTNConfig(bits=3, group_size=16), weight).compress(weight)
    assert isinstance(quantized.packed_codes, PackedTensor) and quantized.packed_mask is None
    assert quantized.packed_codes.data.numel() == -(-weight.numel() * 3 // 8)
    codes = quantized.packed_codes.unpack()
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 7
    assert torch.equal(quantized.unpacked_codes(), codes)
    assert torch.equal(dequantize(codes, quantized.scales, quantized.zeros, 16), quantized.weight)
    pruned = Magnitude(MagnitudeConfig(sparsity=0.5), weight).compress(weight)
    assert pruned.packed_mask.data.numel() == weight.numel() // 8 and pruned.packed_codes is None
    assert torch.equal(pruned.packed_mask.unpack(), pruned.weight != 0)
    moved = quantized.to("cpu")
    assert torch.equal(moved.packed_codes.unpack(), codes)
    # plain data: copies hand the packed fields over as they are, never unpacking or repacking them
    assert dataclasses.replace(pruned, info={}).packed_mask is pruned.packed_mask


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="bits=9"):
        pack_codes(torch.tensor([0]), 9)


def _brute_force_levels(row: list[float], bits: int, symmetric: bool) -> list[float]:
    """The grid of the reference min/max quantizer for one group, computed with python scalars."""
    maxq = 2**bits - 1
    lo, hi = min(min(row), 0.0), max(max(row), 0.0)
    if symmetric:
        hi = max(abs(lo), hi)
        lo = -hi if lo < 0 else lo
    if lo == 0 and hi == 0:
        lo, hi = -1.0, 1.0
    scale = torch.tensor((hi - lo) / maxq, dtype=torch.float32).item()
    zero = (maxq + 1) / 2 if symmetric else round(-lo / scale)
    return [(k - zero) * scale for k in range(maxq + 1)]


@pytest.mark.parametrize("bits, group, symmetric", [(3, 16, False), (4, None, False), (4, 16, True), (2, 8, False)])
def test_rtn_matches_brute_force_and_bounds(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(6, 32) * torch.rand(6, 1) * 3
    w[0, :8] = w[0, :8].abs()  # a group with no negative values: the range still includes 0
    result = RTN(RTNConfig(bits=bits, group_size=group, symmetric=symmetric), w.shape).compress(w)
    step = group or w.shape[1]

    for r in range(w.shape[0]):
        for g, start in enumerate(range(0, w.shape[1], step)):
            chunk = w[r, start : start + step]
            got = result.weight[r, start : start + step]
            levels = torch.tensor(_brute_force_levels(chunk.tolist(), bits, symmetric))
            distance = (chunk[:, None] - levels[None, :]).abs()
            # every value lands on a grid level, and on a nearest one (ties may go either way)
            assert (got[:, None] - levels[None, :]).abs().min(dim=1).values.max() < 1e-6
            assert ((chunk - got).abs() <= distance.min(dim=1).values + 1e-6).all()
            assert got.unique().numel() <= 2**bits
            scale = result.scales[r, g]
            assert ((chunk - got).abs() <= scale / 2 + 1e-6).all()

    assert result.unpacked_codes().max() < 2**bits
    assert torch.equal(dequantize(result.unpacked_codes(), result.scales, result.zeros, group), result.weight)


def test_zero_is_exactly_representable():
    w = torch.tensor([[0.0, 0.3, 0.7, 1.3], [-2.0, 0.0, -0.1, 0.5]])
    result = RTN(RTNConfig(bits=2, group_size=None), w.shape).compress(w)
    assert result.weight[0, 0] == 0 and result.weight[1, 1] == 0


def test_rtn_rejects_nan():
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        RTN(RTNConfig(bits=4, group_size=None), w.shape).compress(w)
