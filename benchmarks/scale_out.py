"""The `ci` study's compress_and_evaluate stage in process, on a 1-GPU local Ray cluster with a Ray job per
step (dagster-ray's executor, CALIB_ASSETS_EXECUTOR=ray-jobs), and on a 1-GPU and a 2-GPU cluster with warm
workers (the default Ray executor); logical GPUs, 2 CPUs: wall time of each, and Ray's overhead per step.

    .venv/bin/python benchmarks/scale_out.py [--study ci] [--repeats 1]

The upstream stages run once, in process; each mode then starts from its own copy of that artifact root
and Dagster home, so that every mode computes every partition. Per accelerator step (compressed_model,
evaluation), from the runs' event logs:
  submit->start  the step's submission to Ray (STEP_WORKER_STARTING) to its first event in its worker
                 (STEP_START): with Ray jobs, a fresh process that imports the library and loads the
                 definitions; with warm workers, a call on a process that did so for an earlier step
                 (cold: the first step a worker process runs, which starts it);
  step           STEP_START to STEP_SUCCESS, the step's own work (in process: the same span).
Overhead per step is the warm submit->start on the 1-GPU cluster, where steps never share the CPU. The target
compares it with a default-study compression step on this CPU, from `calib-assets plan`'s cost model
(constants measured by benchmarks/plan_costs.py), and with the fastest one measured in this run's
in-process mode. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from calib_assets_tests.ray_cluster import local_ray_cluster  # noqa: E402

CLI = Path(sys.executable).with_name("calib-assets")
UPSTREAM = "prepare_models,prepare_corpora,tokenize_pools,build_calibration_sets,build_tasks,baselines"
STAGE = "compress_and_evaluate"
STEPS = ("compressed_model", "evaluation")
TARGET_SHARE = 0.05
MODES = ("in-process", "ray-jobs-1", "ray-1", "ray-2")  # executor-GPUs


def study_file(name: str, directory: Path) -> Path:
    """The study with compute.device auto, so that each accelerator step asks Ray for one GPU."""
    study = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    study.setdefault("compute", {})["device"] = "auto"
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def cli(study: Path, root: Path, home: Path, *args: str, executor: str | None = None) -> float:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CALIB_ASSETS_EXECUTOR", None)
    if executor:
        env["CALIB_ASSETS_EXECUTOR"] = executor
    started = time.perf_counter()
    done = subprocess.run([str(CLI), "--study", str(study), "--root", str(root), "run", *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"calib-assets run {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started


def step_spans(home: Path) -> list[dict]:
    """Per accelerator step of the stage's runs: its kind, its submission-to-start and its own seconds."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    spans: list[dict[str, Any]] = []
    for run in instance.get_runs(dg.RunsFilter(job_name=STAGE)):
        first: dict[tuple, float] = {}
        pids: dict[str | None, Any] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is not None and event.step_key in STEPS:
                first.setdefault((event.event_type, event.step_key), entry.timestamp)
                if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTED:
                    pids[event.step_key] = event.event_specific_data.metadata["pid"].value  # type: ignore[union-attr]
        for step in STEPS:
            start = first[(dg.DagsterEventType.STEP_START, step)]
            submitted = first.get((dg.DagsterEventType.STEP_WORKER_STARTING, step))
            spans.append({"step": step, "run": run.run_id, "pid": pids.get(step), "start": start,
                          "submit_to_start": None if submitted is None else start - submitted,
                          "seconds": first[(dg.DagsterEventType.STEP_SUCCESS, step)] - start})
    seen_pids = set()
    for span in sorted(spans, key=lambda span: span["start"]):  # a process's first step is the one that started it
        span["cold"] = span["pid"] not in seen_pids
        seen_pids.add(span["pid"])
    return spans


def default_compression_step_seconds() -> dict[str, float]:
    """Each default-study method's compression step on this CPU class, from the plan's measured constants."""
    from calib_assets.plan import compression_seconds, load_costs, model_parameters
    from calib_assets.study import load_study

    study, costs = load_study("default"), load_costs()
    parameters = model_parameters(study)
    tokens = study.calib_size(study.calib_keys[0]) * study.calibration.seq_len
    return {method.config.method: compression_seconds(costs, method.config.method, tokens, parameters[model.name])
            for model in study.models for method in study.calibrated_methods}


def run_mode(mode: str, study: Path, upstream_root: Path, upstream_home: Path, base: Path) -> dict:
    root, home = base / f"{mode}-root", base / f"{mode}-home"
    shutil.copytree(upstream_root, root)
    shutil.copytree(upstream_home, home)
    if mode == "in-process":
        return {"mode": mode, "wall": cli(study, root, home, "--jobs", STAGE), "spans": step_spans(home)}
    executor, gpus = mode.rsplit("-", 1)
    with local_ray_cluster(num_gpus=int(gpus), num_cpus=2) as address:
        wall = cli(study, root, home, "--ray", address, "--jobs", STAGE, executor=executor)
    return {"mode": mode, "wall": wall, "spans": step_spans(home)}


def summary(result: dict) -> dict:
    spans = result["spans"]
    row = {"mode": result["mode"], "runs": len({span["run"] for span in spans}), "wall_s": result["wall"]}
    for step in STEPS:
        row[f"{step}_median_s"] = statistics.median(s["seconds"] for s in spans if s["step"] == step)
    row["processes"] = len({s["pid"] for s in spans})
    warm = [s["submit_to_start"] for s in spans if s["submit_to_start"] is not None and not s["cold"]]
    cold = [s["submit_to_start"] for s in spans if s["submit_to_start"] is not None and s["cold"]]
    row["submit_to_start_median_s"] = statistics.median(warm) if warm else None
    row["submit_to_start_max_s"] = max(warm) if warm else None
    row["cold_start_median_s"] = statistics.median(cold) if cold else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="ci")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the four modes, alternating")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats} is not allowed; allowed: an integer >= 1")
    with tempfile.TemporaryDirectory(prefix="scale-out-bench-") as directory:
        base = Path(directory)
        study = study_file(args.study, base)
        upstream_root, upstream_home = base / "upstream-root", base / "upstream-home"
        upstream_seconds = cli(study, upstream_root, upstream_home, "--jobs", UPSTREAM)
        print(f"upstream stages of {args.study!r} in process: {upstream_seconds:.1f} s", flush=True)
        rows = []
        for repeat in range(args.repeats):
            for mode in MODES:
                row = summary(run_mode(mode, study, upstream_root, upstream_home, base / f"round-{repeat}"))
                rows.append(row)
                print(" ".join(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
                               for key, value in row.items()), flush=True)
    report(rows)


def report(rows: list[dict]) -> None:
    import pandas as pd

    table = pd.DataFrame(rows).groupby("mode", sort=False).median(numeric_only=True)
    print(f"\n{STAGE} of the study, median over rounds (seconds):")
    print(table.round(2).to_string())
    overhead = table.loc["ray-1", "submit_to_start_median_s"]
    in_process = min(table.loc["in-process", f"{step}_median_s"] for step in STEPS)
    jobs, cold = table.loc["ray-jobs-1", "cold_start_median_s"], table.loc["ray-1", "cold_start_median_s"]
    print(f"\nRay's overhead per step with a Ray job per step (1-GPU cluster, median): {jobs:.2f} s (every step "
          f"a fresh process); a warm worker's first step, which starts it (median): {cold:.2f} s")
    print(f"Ray's overhead per step on warm workers (submission to the step's start, 1-GPU cluster, median): "
          f"{overhead:.2f} s")
    print(f"  against this run's fastest in-process step kind (median {in_process:.2f} s): {overhead / in_process:.0%}")
    for method, seconds in default_compression_step_seconds().items():
        share = overhead / seconds
        print(f"  against a default-study {method} compression step (plan cost model, {seconds:.1f} s on this CPU "
              f"class): {share:.1%} -> {'meets' if share <= TARGET_SHARE else 'misses'} the {TARGET_SHARE:.0%} target")


if __name__ == "__main__":
    main()
