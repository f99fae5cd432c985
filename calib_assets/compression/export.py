"""A plain Hugging Face folder from a compressed checkpoint, for use outside the project.

The folder holds the base model with the checkpoint's weights applied (dequantized / masked, plus AWQ's
folded norms) in one floating dtype, as safetensors, with the base model's config and tokenizer, and
`compression.json`: the checkpoint's manifest (what produced the weights) and the export's own settings.
`AutoModelForCausalLM.from_pretrained(folder)` loads it with no project code. The weights are dense:
the folder's size is the model's, not the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import atomic_dir, check_output_folder, read_json, write_json
from .checkpoint import MANIFEST_FILE, apply_checkpoint

EXPORT_DTYPES = ("float32", "bfloat16", "float16")
EXPORT_MANIFEST = "compression.json"


def export_hf_folder(
    checkpoint: str | Path,
    base_model: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    protected: tuple[Path, ...] = (),
    overwrite_flag: str = "overwrite=True",
) -> dict[str, Any]:
    """Write `out` (atomically): the Hugging Face model folder `base_model` with `checkpoint` applied.

    `dtype` is one of EXPORT_DTYPES; None keeps the base model's own dtype (its config's), float32 when
    the config names none. `overwrite` replaces only an earlier export (`check_output_folder`), never a
    folder in `protected` or one holding other files; `overwrite_flag` is how the caller's user asks for it.
    Checks every argument (and, where the checkpoint's manifest records it, that
    `base_model` is the model it was compressed from) before loading anything. Returns the export's manifest.
    """
    import torch

    from ..models import load_model, weights_fingerprint

    checkpoint, base_model, out = Path(checkpoint), Path(base_model), Path(out)
    manifest = _checked_checkpoint(checkpoint)
    if not (base_model / "config.json").is_file():
        raise FileNotFoundError(f"base_model={str(base_model)!r} is not a Hugging Face model folder (no config.json)")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {list(EXPORT_DTYPES)} or None (the base's)")
    out = check_output_folder(out, protected=[checkpoint, base_model, *protected], replace=overwrite,
                              marker=EXPORT_MANIFEST, flag=overwrite_flag)
    expected = manifest.get("base_fingerprint")
    if expected is not None and weights_fingerprint(base_model) != expected:
        raise ValueError(f"checkpoint {str(checkpoint)!r} was compressed from another base model than "
                         f"{str(base_model)!r} (weights fingerprint {expected[:12]} expected)")

    model, tokenizer = load_model(base_model, dtype=torch.float32, trust_remote_code=trust_remote_code)
    dtype = dtype or _config_dtype(base_model)
    apply_checkpoint(model, checkpoint)
    model = model.to(getattr(torch, dtype))
    export = {"checkpoint": str(checkpoint.resolve()), "checkpoint_fingerprint": manifest["fingerprint"],
              "base_model": str(base_model.resolve()), "dtype": dtype, "checkpoint_manifest": manifest}
    with atomic_dir(out, exclusive=False) as tmp:  # a folder of the user's, outside the artifact root
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / EXPORT_MANIFEST, export)
    return export


def _checked_checkpoint(checkpoint: Path) -> dict[str, Any]:
    if not (checkpoint / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} is not a compressed checkpoint (no {MANIFEST_FILE})")
    return read_json(checkpoint / MANIFEST_FILE)


def _config_dtype(folder: Path) -> str:
    """The dtype the base folder's config declares (`dtype`, or the older `torch_dtype`), if exportable."""
    config = read_json(folder / "config.json")
    declared = config.get("dtype") or config.get("torch_dtype")
    return declared if declared in EXPORT_DTYPES else "float32"
