"""Size on disk of `export-model` folders against what the checkpoint's manifest reports.

    .venv/bin/python benchmarks/export_size.py [ROOT] [--target 'CALIB|VARIANT'] [--study default]

Exports one materialized checkpoint partition of the study's artifact root (default ./artifacts; nothing is
written there) as compressed-tensors in float32 and bfloat16 and as a dense hf folder, into a temporary
folder, and prints per export: model.safetensors, the expected bytes (the manifest's bits per parameter x
its quantized parameters, plus the tensors left in floating point), the difference, and the whole folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from safetensors import safe_open

from calib_assets.artifacts import artifact_root
from calib_assets.compression.export import WEIGHTS_FILE
from calib_assets.lineage import parse_target
from calib_assets.steps import export_variant_model
from calib_assets.study import load_study


def _floating_bytes(file: Path) -> int:
    """Bytes of the tensors of a safetensors file that are not a packed linear's (weight_packed, its scales,
    zero points and shape): what stays in floating point."""
    import math

    rest = 0
    with safe_open(str(file), "pt") as handle:
        names = list(handle.keys())
        linears = {name.rsplit(".", 1)[0] for name in names if name.endswith(".weight_packed")}
        for name in names:
            if name.rsplit(".", 1)[0] not in linears:
                tensor = handle.get_slice(name)
                rest += math.prod(tensor.get_shape()) * {"F32": 4, "BF16": 2, "F16": 2}[tensor.get_dtype()]
    return rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=None)
    parser.add_argument("--study", default="default")
    parser.add_argument("--target", default="bbc-tech.s0|smollm2-135m.gptq-w3g16")
    args = parser.parse_args()
    study, root = load_study(args.study), (args.root or artifact_root()).resolve()
    target = parse_target(study, args.target)
    variant, calib = target.keys.get("variant") or target.keys["baseline"], target.keys.get("calib")
    with tempfile.TemporaryDirectory(prefix="export-size-") as tmp:
        print(f"{args.target} (study {study.name}, root {root})")
        print("| export | model.safetensors | expected from the manifest | difference | whole folder |")
        print("|---|---|---|---|---|")
        exports = (("compressed-tensors", "float32"), ("compressed-tensors", "bfloat16"), ("hf", "bfloat16"))
        for format, dtype in exports:
            out = Path(tmp) / f"{format}-{dtype}"
            export = export_variant_model(study, variant, calib, root, out, format=format, dtype=dtype)
            manifest = export["checkpoint_manifest"]
            file = out / WEIGHTS_FILE
            rest = _floating_bytes(file)  # dense (hf): every tensor
            expected = rest + (manifest["bits_per_param"] * manifest["n_params"] / 8 if format != "hf" else 0)
            folder = sum(path.stat().st_size for path in out.iterdir())
            print(f"| {format}, {dtype} | {file.stat().st_size / 1e6:.1f} MB | {expected / 1e6:.1f} MB | "
                  f"{file.stat().st_size / expected - 1:+.1%} | {folder / 1e6:.1f} MB |")
        print(f"manifest: {manifest['bits_per_param']:.2f} bits per parameter over {manifest['n_params'] / 1e6:.1f} M "
              f"quantized parameters = {manifest['size_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
