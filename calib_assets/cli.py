"""calib-assets: run a study end to end, print its findings, trace a result back to its calibration data,
export the exact calibration data of a set, or export a compressed model as a plain Hugging Face folder."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from calib_assets.artifacts import ROOT_ENV, RootBusy, artifact_root, check_root_study
from calib_assets.naming import partition_key
from calib_assets.study import STUDY_ENV, StudyError, load_study
from calib_assets.warehouse import WarehouseBusy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calib-assets", description=__doc__)
    parser.add_argument("--study", help=f"study name or YAML path (default: ${STUDY_ENV} or 'default')")
    parser.add_argument("--root", help=f"artifact root directory (default: ${ROOT_ENV} or ./artifacts)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="materialize every partition of the study, then print its findings",
        description="By default every step runs in this process, one after another. With --ray, each partition "
                    "is a run in Dagster's run queue and each step a Ray job on the cluster (one GPU per "
                    "compression or evaluation step), as many at once as the cluster has GPUs.")
    run.add_argument("--ray", metavar="ADDRESS", help="run on the Ray cluster at ADDRESS: 'auto' (the one started on "
                                                     "this machine with `ray start --head`) or HOST:PORT of its head")
    run.add_argument("--jobs", metavar="JOB[,JOB...]", type=lambda text: [job for job in text.split(",") if job],
                     help="run only these stages, in the study's order (e.g. compress_and_evaluate,findings); "
                          "what they read must be materialized already")
    commands.add_parser("findings", help="print the study's findings from the DuckDB warehouse")
    lineage = commands.add_parser(
        "lineage", help="print the chain result -> checkpoint -> calibration set -> pool -> corpus -> base model",
        description="TARGET is a partition key of any asset, as the Dagster UI writes it: CALIB|VARIANT (a "
                    "checkpoint and its evaluation, e.g. 'bbc-tech.s0|smollm2-135m.gptq-w3g16'), CALIB|MODEL (a "
                    "calibration set), MODEL|SOURCE (a token pool), a baseline variant (smollm2-135m.dense), a "
                    "model or a source. Quote it: | is a shell pipe.")
    lineage.add_argument("target", metavar="TARGET", help="partition key, e.g. 'bbc-tech.s0|smollm2-135m.gptq-w3g16'")
    lineage.add_argument("--metric", help="show only results of this metric (e.g. perplexity, acc)")
    lineage.add_argument("--dataset", help="show only results on this evaluation dataset or task")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("verify", help="check every artifact of the study against what was written (sizes and "
                                       "sha256 of its files); exit 1 if any is corrupt")
    export = commands.add_parser(
        "export-calibration", help="write the exact calibration data of a set (text JSONL, token ids, manifest)")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("calib", metavar="CALIB", help="calibration partition, e.g. bbc-tech.s0")
    export.add_argument("--out", required=True, type=Path, help="directory to write (new or empty)")
    export.add_argument("--force", action="store_true", help="replace the exported files in a non-empty --out")
    model = commands.add_parser(
        "export-model", help="write a compressed model as a Hugging Face folder (usable without this project): "
                             "dense weights (hf) or packed integer weights (compressed-tensors)")
    model.add_argument("target", metavar="TARGET",
                       help="CALIB|VARIANT (e.g. 'bbc-tech.s0|smollm2-135m.gptq-w3g16') or a calibration-free "
                            "baseline (e.g. smollm2-135m.rtn-w3g16)")
    model.add_argument("--out", required=True, type=Path, help="directory to create")
    model.add_argument("--format", choices=["hf", "compressed-tensors"], default="hf",
                       help="hf (default): dense weights, any method; compressed-tensors: pack-quantized integer "
                            "weights that vLLM and transformers load (GPTQ, AWQ, RTN)")
    model.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="of the weights left in floating point; default: the base model's")
    model.add_argument("--force", action="store_true", help="replace an existing --out")
    plan = commands.add_parser(
        "plan", help="print the study's partitions, runs and steps and an estimate of GPU-hours and wall time, "
                     "computing nothing",
        description="Partitions per asset, Dagster runs and steps per stage, and GPU-hours and wall time on K GPUs "
                    "from a cost model (seconds = (a x tokens + b) x parameters, constants measured on a CPU by "
                    "benchmarks/plan_costs.py; GPU seconds derived from them). No model is loaded and nothing "
                    "is written (docs/plan.md).")
    plan.add_argument("--gpus", metavar="K", type=int, default=1, help="GPUs running steps at once (default 1)")
    plan.add_argument("--gpu-tflops", metavar="T", type=float,
                      help="the GPU's bf16 dense TFLOP/s (default: the H100 SXM datasheet's, in plan_costs.json)")
    plan.add_argument("--params", metavar="NAME=COUNT", action="append",
                      help="parameters of a model (its name in the study or its hub id), e.g. llama-7b=6.74e9; "
                           "repeatable")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        study = load_study(args.study)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.study:  # for the processes that load the definitions: run workers, steps on other machines
        os.environ[STUDY_ENV] = str(Path(args.study).resolve()) if Path(args.study).suffix else args.study
    if args.root:
        os.environ[ROOT_ENV] = str(Path(args.root).resolve())
    warnings.filterwarnings("ignore", module="dagster")
    commands = {"run": _run, "findings": _findings, "lineage": _lineage, "export-calibration": _export,
                "export-model": _export_model, "verify": _verify, "plan": _plan}
    from calib_assets.lineage import LineageError

    try:
        if args.command != "plan":  # plan reads the study alone: a root of another study does not matter to it
            check_root_study(artifact_root(), study.name, claim=args.command == "run")
        return commands[args.command](study, args)
    except (LineageError, StudyError, RootBusy, WarehouseBusy, ValueError, FileNotFoundError,
            FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # between steps; during one, runner.run_study handles it
        print("interrupted", file=sys.stderr)
        return 130


def _run(study, args) -> int:
    import dagster as dg

    from calib_assets.artifacts import hold_root
    from calib_assets.recovery import recover
    from calib_assets.runner import StudyRunFailed, run_study, stage_plan
    from calib_assets.scale_out import check_cluster_fits, connect_cluster, ray_executor_choice

    only = dict.fromkeys(args.jobs) if args.jobs else None
    stage_plan(study, only)  # unknown job names fail here, before any work
    cluster = None
    if args.ray:  # before any work: the cluster is there and can run the study's steps
        cluster = connect_cluster(args.ray)
        check_cluster_fits(cluster, study.compute.device)

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the runner prints one progress line per step instead
    transformers_logging.set_verbosity_error()
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    root = artifact_root()
    with hold_root(root, study.name), dg.DagsterInstance.get() as instance:
        for line in recover(instance, root):
            print(f"recovered: {line}")
        try:
            if cluster is None:
                from calib_assets.defs import build_definitions

                run_study(build_definitions(study, executor="local"), study, instance, only=only,
                          from_location=True)
            else:
                from calib_assets.queue_runner import run_study_on_ray

                run_study_on_ray(study, instance, cluster, only=only, executor=ray_executor_choice())
        except StudyRunFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return _findings(study, args) if only is None or "findings" in only else 0


def _findings(study, args) -> int:
    from calib_assets.runner import print_findings
    from calib_assets.steps import warehouse_path

    path = warehouse_path(artifact_root())
    if not path.is_file():
        print(f"error: no warehouse at {path}: run `calib-assets run` first", file=sys.stderr)
        return 1
    status = print_findings(path)
    if not status.ok:
        print(f"error: the last dbt build had {len(status.failed_tests)} failed test(s) and left "
              f"{len(status.unbuilt_models)} model(s) unbuilt (listed above); the report and the tables it could "
              "build were written", file=sys.stderr)
        return 1
    return 0


def _verify(study, args) -> int:
    from calib_assets.steps import verify_study

    root = artifact_root()
    problems, checked, missing = verify_study(study, root)
    for line in problems:
        print(line)
    print(f"study {study.name!r} under {root}: {checked} artifact(s) checked, {len(problems)} problem(s), "
          f"{missing} not materialized")
    if problems:
        print("a corrupt artifact is rebuilt by its own step: `calib-assets run` rebuilds them in order",
              file=sys.stderr)
    return 1 if problems else 0


def _plan(study, args) -> int:
    from calib_assets.plan import build_plan, format_plan, parse_params

    plan = build_plan(study, gpus=args.gpus, gpu_tflops=args.gpu_tflops, params=parse_params(args.params))
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def _lineage(study, args) -> int:
    from calib_assets.lineage import chain_as_dicts, format_chain, trace

    chain = trace(study, artifact_root(), args.target, metric=args.metric, dataset=args.dataset)
    print(json.dumps(chain_as_dicts(chain), indent=2, default=str) if args.json else format_chain(chain))
    return 0


def _export(study, args) -> int:
    from calib_assets.lineage import EXPORT_FILES, export_calibration

    manifest = export_calibration(study, artifact_root(), args.model, args.calib, args.out, force=args.force)
    shape = manifest["calibration_set"]["shape"]
    print(f"wrote {', '.join(EXPORT_FILES)} to {args.out}: {shape[0]} windows x {shape[1]} tokens of "
          f"calibration_set [{partition_key(model=args.model, calib=args.calib)}] "
          f"(fingerprint {manifest['calibration_set']['fingerprint']})")
    return 0


def _export_model(study, args) -> int:
    from calib_assets.lineage import parse_target
    from calib_assets.steps import export_variant_model

    target = parse_target(study, args.target)
    if target.kind not in ("evaluation", "baseline"):
        print(f"error: {args.target!r} is a {target.kind} partition, not a model: give CALIB|VARIANT or a "
              f"calibration-free baseline", file=sys.stderr)
        return 2
    variant = target.keys.get("variant") or target.keys["baseline"]
    study_ref = os.environ.get(STUDY_ENV) or study.name  # main() has put a --study there, resolved if a path
    study_ref = str(Path(study_ref).resolve()) if Path(study_ref).suffix else study_ref
    command = shlex.join(["calib-assets", "--study", study_ref, "--root", str(artifact_root())])
    manifest = export_variant_model(study, variant, target.keys.get("calib"), artifact_root(), args.out,
                                    format=args.format, dtype=args.dtype, overwrite=args.force, export_command=command)
    out = args.out.expanduser().resolve()
    print(f"wrote a {args.format} folder to {out} ({manifest['dtype']}): load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}){_loading_hint(manifest)}; calibration.json names "
          f"its calibration data")
    return 0


def _loading_hint(manifest: dict) -> str:
    """What asymmetric pack-quantized folders need from transformers (docs/export.md)."""
    symmetric = manifest.get("scheme", {}).get("symmetric", True)
    return "" if symmetric else (" (zero points: pass quantization_config=CompressedTensorsConfig(dequantize=True) "
                                 "to transformers; vLLM reads them as they are)")


if __name__ == "__main__":
    raise SystemExit(main())
