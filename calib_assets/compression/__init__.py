"""Post-training compression: typed method configs, per-linear compressors, the layer-wise engine and
compressed checkpoints. Plain Python + torch (transformers and safetensors imported where used).
"""

from __future__ import annotations

from .checkpoint import apply_checkpoint, load_checkpoint, save_checkpoint
from .config import (
    METHODS,
    CompressedLinear,
    GPTQConfig,
    MagnitudeConfig,
    MethodConfig,
    RTNConfig,
    WandaConfig,
    check_layer_compatible,
    make_method_config,
)
from .engine import (
    COMPRESSORS,
    compress_model,
    compressible_linears,
    forward_dtype_for,
    layerwise_hidden_states,
    make_compressor,
)
from .gptq import GPTQ
from .magnitude import Magnitude
from .rtn import RTN
from .wanda import Wanda

__all__ = [
    "COMPRESSORS",
    "METHODS",
    "CompressedLinear",
    "GPTQ",
    "GPTQConfig",
    "Magnitude",
    "MagnitudeConfig",
    "MethodConfig",
    "RTN",
    "RTNConfig",
    "Wanda",
    "WandaConfig",
    "apply_checkpoint",
    "check_layer_compatible",
    "compress_model",
    "compressible_linears",
    "forward_dtype_for",
    "layerwise_hidden_states",
    "load_checkpoint",
    "make_compressor",
    "make_method_config",
    "save_checkpoint",
]
