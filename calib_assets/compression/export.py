"""A compressed checkpoint as a Hugging Face model folder, for use outside the project.

Two formats (`EXPORT_FORMATS`):
- `hf`: the base model with the checkpoint's weights applied (dequantized / masked, plus AWQ's folded
  norms) in one floating dtype: dense weights, the model's full size; any method.
- `compressed-tensors`: the quantized linears in compressed-tensors' pack-quantized layout
  (`pack_quantized`: codes packed into int32, scales, zero points where asymmetric) and `quantization_config`
  in config.json; every other tensor (embeddings, norms with AWQ's folding, head) in the export's dtype.
  What vLLM and transformers (with the compressed-tensors package) load for GPTQ, AWQ and RTN; methods the
  format cannot express (SpQR's quantized statistics and outliers, pruned weights) are refused.
Both folders hold the tokenizer, `compression.json` (the checkpoint's manifest and the export's settings)
and, when the caller gives it, `calibration.json` (what the model was calibrated on). They load with
`AutoModelForCausalLM.from_pretrained(folder)` and no project code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import atomic_dir, check_output_folder, read_json, write_json
from . import pack_quantized
from .checkpoint import MANIFEST_FILE, apply_compressed, load_checkpoint
from .pack_quantized import NotExpressible

EXPORT_FORMATS = ("hf", "compressed-tensors")
EXPORT_DTYPES = ("float32", "bfloat16", "float16")
EXPORT_MANIFEST = "compression.json"
CALIBRATION_SIDECAR = "calibration.json"
WEIGHTS_FILE = "model.safetensors"


def export_model_folder(
    checkpoint: str | Path,
    base_model: str | Path,
    out: str | Path,
    *,
    format: str = "hf",
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    protected: tuple[Path, ...] = (),
    overwrite_flag: str = "overwrite=True",
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `out` (atomically): the Hugging Face model folder `base_model` with `checkpoint` in `format`.

    `dtype` is one of EXPORT_DTYPES; None keeps the base model's own dtype (its config's), float32 when
    the config names none. `overwrite` replaces only an earlier export (`check_output_folder`), never a
    folder in `protected` or one holding other files; `overwrite_flag` is how the caller's user asks for it.
    `calibration` is written as `calibration.json`. Checks every argument (that the format can express the
    checkpoint's method and, where the manifest records it, that `base_model` is the model it was
    compressed from) before loading the model. Returns the export's manifest.
    """
    import torch

    from ..models import load_model, weights_fingerprint

    checkpoint, base_model, out = Path(checkpoint), Path(base_model), Path(out)
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} is not supported; allowed: {list(EXPORT_FORMATS)}")
    manifest = _checked_checkpoint(checkpoint)
    if not (base_model / "config.json").is_file():
        raise FileNotFoundError(f"base_model={str(base_model)!r} is not a Hugging Face model folder (no config.json)")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {list(EXPORT_DTYPES)} or None (the base's)")
    out = check_output_folder(out, protected=[checkpoint, base_model, *protected], replace=overwrite,
                              marker=EXPORT_MANIFEST, flag=overwrite_flag)
    compressed, _ = load_checkpoint(checkpoint)
    scheme = _pack_quantized_scheme(checkpoint, manifest, compressed) if format == "compressed-tensors" else None
    expected = manifest.get("base_fingerprint")
    if expected is not None and weights_fingerprint(base_model) != expected:
        raise ValueError(f"checkpoint {str(checkpoint)!r} was compressed from another base model than "
                         f"{str(base_model)!r} (weights fingerprint {expected[:12]} expected)")

    model, tokenizer = load_model(base_model, dtype=torch.float32, trust_remote_code=trust_remote_code)
    dtype = dtype or _config_dtype(base_model)
    apply_compressed(model, compressed)
    model = model.to(getattr(torch, dtype))
    export = {"format": format, "checkpoint": str(checkpoint.resolve()),
              "checkpoint_fingerprint": manifest["fingerprint"], "base_model": str(base_model.resolve()),
              "dtype": dtype, **({"scheme": scheme} if scheme else {}), "checkpoint_manifest": manifest}
    with atomic_dir(out, exclusive=False) as tmp:  # a folder of the user's, outside the artifact root
        if scheme is None:
            model.save_pretrained(tmp)
        else:
            _save_pack_quantized(model, compressed, scheme, dtype, tmp)
        tokenizer.save_pretrained(tmp)
        if calibration is not None:
            write_json(tmp / CALIBRATION_SIDECAR, calibration)
        write_json(tmp / EXPORT_MANIFEST, export)
    return export


def _pack_quantized_scheme(checkpoint: Path, manifest: dict[str, Any], compressed: dict) -> dict[str, Any]:
    """The one weight scheme of every quantized linear of the checkpoint, or NotExpressible naming why not."""
    method = manifest.get("method") or {}
    label = manifest.get("method_label") or method.get("method", "?")
    quantized = {name: result for name, result in compressed.items() if result.quantized}
    hint = f"checkpoint {str(checkpoint)!r} ({label}) cannot be exported as compressed-tensors"
    if not quantized:
        raise NotExpressible(f"{hint}: it holds no quantized weights (a pruned model stays dense there: "
                             f"use format 'hf'); the format holds {pack_quantized.EXPRESSIBLE}")
    try:
        schemes = {name: pack_quantized.weight_scheme(name, result, bool(method.get("symmetric", False)),
                                                      bool(method.get("act_order", False)))
                   for name, result in quantized.items()}
    except NotExpressible as error:
        raise NotExpressible(f"{hint}: {error}; export it with format 'hf'") from None
    distinct = {repr(sorted(scheme.items())) for scheme in schemes.values()}
    if len(distinct) > 1:
        raise NotExpressible(f"{hint}: its layers use {len(distinct)} different schemes; one is supported")
    return next(iter(schemes.values()))


def _save_pack_quantized(model, compressed: dict, scheme: dict[str, Any], dtype: str, folder: Path) -> None:
    """model.safetensors (the packed linears and every other tensor, tied ones once) and config.json."""
    from safetensors.torch import save_file
    from torch import nn

    quantized = {name for name, result in compressed.items() if result.quantized}
    tensors, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if key.removesuffix(".weight") in quantized or tensor.data_ptr() in seen:  # tied: the first name only
            continue
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.detach().contiguous()
    for name in sorted(quantized):
        tensors.update(pack_quantized.packed_tensors(name, compressed[name], scheme))
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    ignore = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in quantized]
    model.config.save_pretrained(folder)
    config = read_json(folder / "config.json")
    config.update(dtype=dtype, quantization_config=pack_quantized.quantization_config(scheme, ignore))
    write_json(folder / "config.json", config)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def _checked_checkpoint(checkpoint: Path) -> dict[str, Any]:
    if not (checkpoint / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} is not a compressed checkpoint (no {MANIFEST_FILE})")
    return read_json(checkpoint / MANIFEST_FILE)


def _config_dtype(folder: Path) -> str:
    """The dtype the base folder's config declares (`dtype`, or the older `torch_dtype`), if exportable."""
    config = read_json(folder / "config.json")
    declared = config.get("dtype") or config.get("torch_dtype")
    return declared if declared in EXPORT_DTYPES else "float32"
