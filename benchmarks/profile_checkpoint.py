"""Where one default-study checkpoint's time goes, end to end, without Dagster: compression then evaluation
of one (variant, calibration set) partition, under cProfile, into a scratch copy of an artifact root whose
upstream stages are materialized.

    .venv/bin/python benchmarks/profile_checkpoint.py ROOT [--study default] [--variant smollm2-135m.gptq-w3g16]
        [--calib bbc-tech.s0] [--top 25]

ROOT: an artifact root of the study with its upstream stages done (e.g. `calib-assets run --jobs
prepare_models,prepare_corpora,tokenize_pools,build_calibration_sets,build_tasks,baselines`); the partition's
checkpoint and evaluation are written under a temporary copy of it, never under ROOT. Prints each phase's
wall time and the functions with the most cumulative time in each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--study", default="default")
    parser.add_argument("--variant")
    parser.add_argument("--calib")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from _common import scratch_copy_of_root
    from calib_assets.steps import evaluate_variant, forward_placement, materialize_checkpoint
    from calib_assets.study import load_study

    study = load_study(args.study)
    variant = args.variant or study.variant_keys[0]
    calib = args.calib or study.calib_keys[0]
    if variant not in study.variant_keys or calib not in study.calib_keys:
        raise SystemExit(f"{variant}|{calib} is not a partition of {study.name!r}; variants: {study.variant_keys}, "
                         f"calibration sets: {study.calib_keys}")
    device, dtype = forward_placement(study)
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        root = scratch_copy_of_root(args.root, study.name, Path(scratch), "checkpoints", "evaluations")
        phases = {
            "compression": lambda: materialize_checkpoint(study, variant, calib, root, device=device,
                                                          forward_dtype=dtype, log=lambda line: None),
            "evaluation": lambda: evaluate_variant(study, variant, calib, root, device=device, forward_dtype=dtype,
                                                   run_id="profile"),
        }
        print(f"{variant}|{calib} on {device}, forward dtype {dtype}")
        for name, phase in phases.items():
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.runcall(phase)
            print(f"\n== {name}: {time.perf_counter() - started:.1f} s wall")
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
            print(out.getvalue())


if __name__ == "__main__":
    main()
