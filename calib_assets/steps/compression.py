"""Compressed checkpoints: the base model compressed by a variant's method (on one calibration set when the
method needs one), and loading or exporting a variant's weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from calib_assets import __version__
from calib_assets.calibration import load_calibration_set
from calib_assets.compression import apply_checkpoint, compress_model, export_model_folder, save_checkpoint
from calib_assets.models import trust_remote_code
from calib_assets.naming import partition_key
from calib_assets.steps.calibration import calibration_manifest
from calib_assets.steps.inputs import base_model_manifest, load_base
from calib_assets.steps.layout import calibration_dir, checkpoint_dir, read_manifest, reuse_or_build, step_inputs
from calib_assets.study import Study
from calib_assets.timing import span


def materialize_checkpoint(study: Study, variant: str, calib: str | None, root: Path, *, device: str,
                           forward_dtype, log=print) -> dict[str, Any]:
    """Compress the base model with the variant's method (on calibration set `calib` if it needs one)."""
    model_spec, method = study.parse_variant(variant)
    if method is None:
        raise ValueError(f"variant {variant!r} is the dense model: it has no checkpoint")
    if method.needs_calibration != (calib is not None):
        raise ValueError(f"method {method.label!r} {'needs' if method.needs_calibration else 'takes no'} "
                         f"calibration set (got {calib!r})")
    base = base_model_manifest(root, model_spec.name)
    calibration = calibration_manifest(root, model_spec.name, calib) if calib else None
    directory = checkpoint_dir(root, variant, calib)
    inputs, inputs_hash = step_inputs(
        "compressed_model", base_fingerprint=base["fingerprint"], method=method.config.to_dict(),
        calibration_fingerprint=calibration["fingerprint"] if calibration else None,
        forward_dtype=str(forward_dtype), batch_size=study.compute.batch_size, **_held_in(study))

    def build() -> dict[str, Any]:
        with span("compression: load model and calibration set"):
            model, _, _ = load_base(study, root, model_spec.name, dtype=study.compute.model_dtype)
            ids = load_calibration_set(calibration_dir(root, model_spec.name, calib)).input_ids() if calib else None
        started = time.perf_counter()
        compressed = compress_model(model, ids, method.config, device=device, forward_dtype=forward_dtype,
                                    batch_size=study.compute.batch_size,
                                    progress=lambda done, total, layer: log(f"compressed {layer} ({done}/{total})"))
        seconds = time.perf_counter() - started
        with span("compression: pack and save"):
            return save_checkpoint(directory, compressed, {
                "variant": variant, "calib": calib, "model": model_spec.name, "method": method.config.to_dict(),
                "method_label": method.label, "base_fingerprint": base["fingerprint"],
                "calibration_fingerprint": calibration["fingerprint"] if calibration else None,
                "inputs": inputs, "inputs_hash": inputs_hash, "compress_seconds": round(seconds, 2),
                "device": device, "forward_dtype": str(forward_dtype), "library_version": __version__})

    return reuse_or_build(f"compressed_model [{partition_key(variant=variant, calib=calib)}]", directory, inputs_hash,
                          build, log=log)


def dense_baseline_manifest(study: Study, variant: str, root: Path) -> dict[str, Any]:
    """The dense variant's 'checkpoint': the base model itself, nothing to compute (so: reused)."""
    model_spec, _ = study.parse_variant(variant)
    return {**base_model_manifest(root, model_spec.name), "reused": True}


def _held_in(study: Study) -> dict[str, str]:
    """The model's dtype during compression, as an input of the checkpoint; left out at the default
    (float32), so that checkpoints made before the option existed are still reused."""
    dtype = study.compute.model_dtype
    return {} if dtype == "float32" else {"model_dtype": dtype}


def variant_manifest(study: Study, variant: str, calib: str | None, root: Path) -> dict[str, Any]:
    """What a variant's weights are: the base model's manifest (dense) or the checkpoint's."""
    model_spec, method = study.parse_variant(variant)
    base = base_model_manifest(root, model_spec.name)
    if method is None:
        return {"fingerprint": base["fingerprint"], "base_fingerprint": base["fingerprint"]}
    directory = checkpoint_dir(root, variant, calib)
    manifest = read_manifest(directory, "compressed_model", partition_key(variant=variant, calib=calib))
    if manifest["base_fingerprint"] != base["fingerprint"]:
        raise ValueError(f"checkpoint {str(directory)!r} was built from another base model "
                         f"({manifest['base_fingerprint'][:12]} != {base['fingerprint'][:12]}): re-materialize it")
    return manifest


def load_variant_model(study: Study, variant: str, calib: str | None, root: Path, device: str = "cpu"):
    """The dense base model, or the base model with the variant's checkpoint applied."""
    model_spec, method = study.parse_variant(variant)
    manifest = variant_manifest(study, variant, calib, root)
    model, tokenizer, _ = load_base(study, root, model_spec.name, device=device)
    if method is not None:
        apply_checkpoint(model, checkpoint_dir(root, variant, calib))
    return model, tokenizer, manifest


def export_variant_model(study: Study, variant: str, calib: str | None, root: Path, out: Path, *,
                         format: str = "hf", dtype: str | None = None, overwrite: bool = False,
                         export_command: str = "calib-assets") -> dict[str, Any]:
    """A Hugging Face folder of a compressed variant in `format` (weights as the method produced them), with
    calibration.json naming what it was calibrated on; `export_command` is how the user's shell calls this
    study (`calib-assets --study ...`), for the sidecar's command that exports the calibration data."""
    model_spec, method = study.parse_variant(variant)
    base_folder = base_model_manifest(root, model_spec.name)["folder"]
    if method is None:
        raise ValueError(f"{variant!r} is the dense model: its folder is {base_folder!r}")
    manifest = variant_manifest(study, variant, calib, root)  # materialized, and from this study's base model
    sidecar = calibration_sidecar(study, variant, calib, root, manifest, export_command)
    return export_model_folder(checkpoint_dir(root, variant, calib), Path(base_folder), out, format=format,
                               dtype=dtype, overwrite=overwrite, trust_remote_code=trust_remote_code(model_spec),
                               protected=(Path(root),), overwrite_flag="--force", calibration=sidecar)


def calibration_sidecar(study: Study, variant: str, calib: str | None, root: Path, manifest: dict[str, Any],
                        export_command: str) -> dict[str, Any]:
    """calibration.json of an exported variant: the checkpoint, its method (a pruned one's sparsity pattern) and
    the calibration set it was compressed on (asset partition, fingerprint, the command that exports its exact
    data); `calibration_set` is None for a calibration-free method."""
    model_spec, method = study.parse_variant(variant)
    assert method is not None  # the dense model is not exported
    sidecar: dict[str, Any] = {
        "study": study.name, "variant": variant, "method": method.config.to_dict(), "method_label": method.label,
        "checkpoint": {"asset": "compressed_model" if calib else "baseline_model",
                       "partition": partition_key(variant=variant, calib=calib),
                       "fingerprint": manifest["fingerprint"]},
        "base_model": {"name": model_spec.name, "fingerprint": manifest["base_fingerprint"]},
        "calibration_set": None,
    }
    config = method.config
    if hasattr(config, "target_sparsity") and manifest.get("sparsity"):
        pattern = f"{config.n}:{config.m}" if getattr(config, "n", None) else "unstructured"
        sidecar["sparsity"] = {"pattern": pattern, "target": config.target_sparsity,
                               "measured": manifest["sparsity"]}
    if calib is not None:
        calibration = calibration_manifest(root, model_spec.name, calib)
        sidecar["calibration_set"] = {
            "asset": "calibration_set", "partition": partition_key(model=model_spec.name, calib=calib),
            "fingerprint": calibration["fingerprint"], "source": calibration["source"],
            "n_samples": calibration["n_samples"], "seq_len": calibration["seq_len"], "seed": calibration["seed"],
            "export": f"{export_command} export-calibration {model_spec.name} {calib} --out calibration-{calib}",
        }
    return sidecar


