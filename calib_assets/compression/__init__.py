"""Post-training compression: typed method configs, per-linear compressors, the layer-wise engine and
compressed checkpoints. Plain Python + torch (transformers and safetensors imported where used).

Modules, each importing only those before it: packing, config, attention -> result -> quantizer ->
obs (the second-order machinery), layerwise -> the methods (rtn, magnitude, wanda, gptq, sparsegpt, spqr,
awq) -> engine -> checkpoint -> export (`calib_assets_tests/test_compression_imports.py` checks it).
"""

from __future__ import annotations

from .awq import AWQConfig, compress_layer_awq
from .checkpoint import apply_checkpoint, load_checkpoint, save_checkpoint
from .config import (
    METHODS,
    GPTQConfig,
    MagnitudeConfig,
    MethodConfig,
    RTNConfig,
    SparseGPTConfig,
    WandaConfig,
    check_layer_compatible,
    make_method_config,
)
from .engine import (
    COMPRESSORS,
    LAYER_COMPRESSORS,
    compress_model,
    compressible_linears,
    layerwise_hidden_states,
    make_compressor,
)
from .export import export_model_folder
from .gptq import GPTQ
from .magnitude import Magnitude
from .result import CompressedLinear, ExtraTensor
from .rtn import RTN
from .sparsegpt import SparseGPT
from .spqr import SpQR, SpQRConfig, spqr_bits_per_param
from .wanda import Wanda

__all__ = [
    "AWQConfig",
    "ExtraTensor",
    "SpQR",
    "SpQRConfig",
    "compress_layer_awq",
    "spqr_bits_per_param",
    "COMPRESSORS",
    "LAYER_COMPRESSORS",
    "METHODS",
    "CompressedLinear",
    "GPTQ",
    "GPTQConfig",
    "Magnitude",
    "MagnitudeConfig",
    "MethodConfig",
    "RTN",
    "RTNConfig",
    "SparseGPT",
    "SparseGPTConfig",
    "Wanda",
    "WandaConfig",
    "apply_checkpoint",
    "check_layer_compatible",
    "compress_model",
    "compressible_linears",
    "export_model_folder",
    "layerwise_hidden_states",
    "load_checkpoint",
    "make_compressor",
    "make_method_config",
    "save_checkpoint",
]
