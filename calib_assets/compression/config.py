"""Typed, validated configurations of the compression methods (`METHODS`: name -> config class), and the
input checks every compressor shares. Imports nothing else of the package.

A config is a frozen dataclass validated on construction; `label()` is a short id made of [a-z0-9-]
that is safe in a Dagster partition key ("gptq-w3g64", "rtn-w4", "wanda-2of4", "magnitude-50pct").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {allowed}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")


def _number_tag(value: float) -> str:
    """0.5 -> '0p5', 50.0 -> '50': a float written with [0-9p] only."""
    text = f"{value:.6g}"
    if "e" in text:
        text = f"{value:.10f}".rstrip("0")
    return text.rstrip(".").replace(".", "p")


@dataclass(frozen=True)
class _QuantConfig:
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        _check_int("bits", self.bits, 2, 8)
        if self.group_size is not None:
            _check_int("group_size", self.group_size, 1)
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be true or false, got {self.symmetric!r}")

    def _quant_tag(self) -> str:
        tag = f"w{self.bits}" + (f"g{self.group_size}" if self.group_size else "")
        return tag + ("-sym" if self.symmetric else "")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RTNConfig(_QuantConfig):
    """Round-to-nearest: the GPTQ min/max quantizer applied to the weights, no data."""

    method: ClassVar[str] = "rtn"
    row_independent: ClassVar[bool] = True  # rows compressed independently of each other
    needs_calibration: ClassVar[bool] = False

    def label(self) -> str:
        return f"rtn-{self._quant_tag()}"


@dataclass(frozen=True)
class GPTQConfig(_QuantConfig):
    """GPTQ (Frantar et al. 2023): column-wise quantization with Hessian-based error feedback."""

    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = False  # columns by descending diag(H)
    static_groups: bool = False  # every group's grid fitted on the original weights, before the loop
    true_sequential: bool = False  # engine: [q,k,v] -> [o] -> [gate,up] -> [down], re-running the layer

    method: ClassVar[str] = "gptq"
    row_independent: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_float("percdamp", self.percdamp)
        if not 0 <= self.percdamp:
            raise ValueError(f"percdamp={self.percdamp!r} must be >= 0")
        _check_int("blocksize", self.blocksize, 1)
        for name in ("act_order", "static_groups", "true_sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.static_groups and self.group_size is None:
            raise ValueError("static_groups=True needs a group_size (with one group per row it changes nothing)")

    def label(self) -> str:
        label = f"gptq-{self._quant_tag()}"
        label += "-act" if self.act_order else ""
        label += "-static" if self.static_groups else ""
        label += "-ts" if self.true_sequential else ""
        if self.percdamp != 0.01:
            label += f"-damp{_number_tag(self.percdamp)}"
        return label


@dataclass(frozen=True)
class _SparsityConfig:
    """Exactly one of: unstructured `sparsity` in [0, 1), or N:M (prune the n lowest of every m inputs)."""

    sparsity: float | None = None
    n: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        nm_given = self.n is not None or self.m is not None
        if self.sparsity is None and not nm_given:
            raise ValueError("give either sparsity (in [0, 1)) or n and m (N:M, 0 < n < m)")
        if self.sparsity is not None and nm_given:
            raise ValueError(
                f"give either sparsity or n/m, not both (got sparsity={self.sparsity!r}, "
                f"n={self.n!r}, m={self.m!r})"
            )
        if self.sparsity is not None:
            _check_float("sparsity", self.sparsity)
            if not 0 <= self.sparsity < 1:
                raise ValueError(f"sparsity={self.sparsity!r} is out of range; allowed: [0, 1)")
        else:
            if self.n is None or self.m is None:
                raise ValueError(f"N:M needs both n and m (got n={self.n!r}, m={self.m!r})")
            _check_int("n", self.n, 1)
            _check_int("m", self.m, 2)
            if not self.n < self.m:
                raise ValueError(f"N:M needs 0 < n < m, got n={self.n}, m={self.m}")

    @property
    def target_sparsity(self) -> float:
        return float(self.sparsity) if self.sparsity is not None else self.n / self.m  # type: ignore[operator]

    def _sparsity_tag(self) -> str:
        if self.sparsity is None:
            return f"{self.n}of{self.m}"
        return f"{_number_tag(self.sparsity * 100)}pct"

    def label(self) -> str:
        return f"{self.method}-{self._sparsity_tag()}"  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MagnitudeConfig(_SparsityConfig):
    """Magnitude pruning baseline: per-matrix |W| threshold, or N:M on |W|; no data."""

    method: ClassVar[str] = "magnitude"
    row_independent: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = False


@dataclass(frozen=True)
class WandaConfig(_SparsityConfig):
    """Wanda (Sun et al. 2024): prune by |W_ij| * ||X_j||_2 within each output row."""

    method: ClassVar[str] = "wanda"
    row_independent: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True


@dataclass(frozen=True)
class SparseGPTConfig(_SparsityConfig):
    """SparseGPT (Frantar & Alistarh, 2023): OBS pruning with GPTQ's Hessian updates; optional joint
    quantization of the kept weights (`bits`, `group_size`, `symmetric` as in GPTQ)."""

    blocksize: int = 128
    percdamp: float = 0.01
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = False

    method: ClassVar[str] = "sparsegpt"
    needs_calibration: ClassVar[bool] = True

    @property
    def row_independent(self) -> bool:
        """N:M masks are chosen row by row; the unstructured mask over whole blocks of all rows, so
        row-stacking q/k/v would change it."""
        return self.sparsity is None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("blocksize", self.blocksize, 1)
        _check_float("percdamp", self.percdamp)
        if not 0 <= self.percdamp:
            raise ValueError(f"percdamp={self.percdamp!r} must be >= 0")
        if self.m is not None and self.blocksize % self.m != 0:
            raise ValueError(f"N:M needs m={self.m} to divide blocksize={self.blocksize}")
        if self.bits is None:
            if self.group_size is not None or self.symmetric:
                raise ValueError(
                    f"group_size={self.group_size!r}, symmetric={self.symmetric!r} need bits (2..8) "
                    "for joint quantization"
                )
        else:
            _QuantConfig.__post_init__(self)  # type: ignore[arg-type]

    def label(self) -> str:
        label = f"sparsegpt-{self._sparsity_tag()}"
        if self.sparsity is not None and self.blocksize != 128:  # the unstructured mask is chosen per block
            label += f"-bs{self.blocksize}"
        if self.bits is not None:
            label += "-" + _QuantConfig._quant_tag(self)  # type: ignore[arg-type]
        if self.percdamp != 0.01:
            label += f"-damp{_number_tag(self.percdamp)}"
        return label


@dataclass(frozen=True)
class SpQRConfig:
    """SpQR (Dettmers et al., 2024): GPTQ with small groups whose scales and zero points are quantized
    again (`qq_*`, in runs of `qq_groupsize` output rows), plus unstructured fp32 outliers.

    `outlier_threshold` is relative to mean_j(var_i(W_ij) / U_jj^2) (U: Cholesky factor of H^-1);
    `inf` keeps no outliers. Not row-independent: the threshold and the second-level groups span rows,
    so the engine compresses each linear on its own rather than row-stacked.
    """

    bits: int = 3
    group_size: int = 16
    qq_scale_bits: int = 3
    qq_zero_bits: int = 3
    qq_groupsize: int = 16
    outlier_threshold: float = 0.2
    act_order: bool = True
    percdamp: float = 1.0
    blocksize: int = 128
    simplified_outliers: bool = False

    method: ClassVar[str] = "spqr"
    row_independent: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_int("bits", self.bits, 2, 8)
        _check_int("group_size", self.group_size, 1)
        _check_int("qq_scale_bits", self.qq_scale_bits, 2, 8)
        _check_int("qq_zero_bits", self.qq_zero_bits, 2, 8)
        _check_int("qq_groupsize", self.qq_groupsize, 1)
        _check_int("blocksize", self.blocksize, 1)
        _check_float("outlier_threshold", self.outlier_threshold)
        if not self.outlier_threshold >= 0:
            raise ValueError(f"outlier_threshold={self.outlier_threshold!r} must be >= 0 (inf: no outliers)")
        _check_float("percdamp", self.percdamp)
        if not 0 <= self.percdamp:
            raise ValueError(f"percdamp={self.percdamp!r} must be >= 0")
        for name in ("act_order", "simplified_outliers"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def label(self) -> str:
        label = f"spqr-w{self.bits}g{self.group_size}"
        if (self.qq_scale_bits, self.qq_zero_bits, self.qq_groupsize) != (3, 3, 16):
            label += f"-qq{self.qq_scale_bits}{self.qq_zero_bits}g{self.qq_groupsize}"
        if self.outlier_threshold != 0.2:
            tag = "none" if self.outlier_threshold == float("inf") else _number_tag(self.outlier_threshold)
            label += f"-ol{tag}"
        label += "" if self.act_order else "-noact"
        label += "-simple" if self.simplified_outliers else ""
        if self.percdamp != 1.0:
            label += f"-damp{_number_tag(self.percdamp)}"
        return label

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class AWQConfig(_QuantConfig):
    """AWQ (Lin et al., 2024): per-input-channel scales s = mean|x|^a searched on a grid of `n_grid` ratios
    a in [0, 1) to minimise the block output error, 1/s folded into the previous op; then, with `clip`, a
    per-group clipping range searched over `clip_grid` steps down to (1 - max_shrink) of the max; RTN.
    `search_samples` runs the scale search's attention and MLP trials on the first that many calibration
    samples only (the reference uses them all; channel means and Gram matrices always do)."""

    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    search_samples: int | None = None

    method: ClassVar[str] = "awq"
    row_independent: ClassVar[bool] = False  # AWQ compresses a whole decoder layer (awq.compress_layer_awq)
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int("n_grid", self.n_grid, 1)
        _check_int("clip_grid", self.clip_grid, 1)
        if not isinstance(self.clip, bool):
            raise ValueError(f"clip must be true or false, got {self.clip!r}")
        _check_float("max_shrink", self.max_shrink)
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"max_shrink={self.max_shrink!r} is out of range; allowed: [0, 1)")
        if self.search_samples is not None:
            _check_int("search_samples", self.search_samples, 1)

    def label(self) -> str:
        label = f"awq-{self._quant_tag()}"
        label += "" if self.clip else "-noclip"
        if self.n_grid != 20:
            label += f"-grid{self.n_grid}"
        if self.clip and (self.clip_grid, self.max_shrink) != (20, 0.5):
            label += f"-clip{self.clip_grid}s{_number_tag(self.max_shrink)}"
        if self.search_samples is not None:
            label += f"-ss{self.search_samples}"
        return label


MethodConfig = RTNConfig | GPTQConfig | MagnitudeConfig | WandaConfig | SparseGPTConfig | SpQRConfig | AWQConfig

METHODS: dict[str, type] = {
    "rtn": RTNConfig,
    "magnitude": MagnitudeConfig,
    "wanda": WandaConfig,
    "gptq": GPTQConfig,
    "sparsegpt": SparseGPTConfig,
    "spqr": SpQRConfig,
    "awq": AWQConfig,
}


def make_method_config(method: str, params: dict[str, Any] | None = None) -> MethodConfig:
    """Build and validate the config of `method` from plain parameters (e.g. a study YAML)."""
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; allowed: {sorted(METHODS)}")
    cls = METHODS[method]
    params = dict(params or {})
    if params.get("method", method) != method:  # `to_dict()` output carries its method name
        raise ValueError(f"params name method {params['method']!r} but method {method!r} was asked for")
    params.pop("method", None)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}; allowed: {allowed}")
    return cls(**params)


def check_layer_compatible(config: MethodConfig, layer_name: str, in_features: int) -> None:
    """Raise ValueError if the config's grouping cannot tile the layer's input dimension."""
    group = getattr(config, "group_size", None)
    if group is not None and in_features % group != 0:
        raise ValueError(
            f"layer {layer_name!r}: group_size={group} does not divide in_features={in_features}; "
            f"use a group size that divides {in_features} or group_size=None"
        )
    m = getattr(config, "m", None)
    if m is not None and in_features % m != 0:
        raise ValueError(
            f"layer {layer_name!r}: N:M block m={m} does not divide in_features={in_features}"
        )


class DataFree:
    """Base of the calibration-free compressors: they see the weights only."""

    def __init__(self, config: MethodConfig, layer: Any):
        self.config = config
        self.rows, self.columns = weight_shape_of(layer)

    def add_batch(self, inp: torch.Tensor) -> None:
        """Calibration-free: inputs are ignored."""


def weight_shape_of(layer_or_shape: Any) -> tuple[int, int]:
    """(out_features, in_features) of an nn.Linear, a weight tensor, or a shape."""
    if isinstance(layer_or_shape, torch.nn.Linear):
        return layer_or_shape.out_features, layer_or_shape.in_features
    if isinstance(layer_or_shape, torch.Tensor):
        layer_or_shape = layer_or_shape.shape
    rows, cols = (int(v) for v in layer_or_shape)
    return rows, cols


def check_finite_statistic(what: str, statistic: torch.Tensor, source: torch.Tensor) -> None:
    """`check_finite` of `source` paid only when `statistic` (computed from it, e.g. X^T X) is not finite:
    a NaN or Inf in the source always reaches the statistic, so the common case skips a pass over it."""
    if not all_finite(statistic):
        check_finite(what, source)
        raise FloatingPointError(f"{what} overflows float32 in its statistics")


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in `tensor`: one min/max pass (NaN propagates to both, an Inf shows in one), faster
    than materializing torch.isfinite's mask (docs/benchmarks.md)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def check_finite(what: str, tensor: torch.Tensor) -> None:
    """Raise a clear error when a tensor holds NaN or Inf (the engine adds the layer name)."""
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise FloatingPointError(f"{what} contains {bad} non-finite values (NaN or Inf)")
