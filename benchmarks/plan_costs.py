"""Measure the constants of `calib-assets plan`'s cost model on this machine, print them, and with --write
store them in calib_assets/plan_costs.json.

    .venv/bin/python benchmarks/plan_costs.py [--methods gptq,spqr,sparsegpt,wanda,rtn,magnitude,awq] [--write]
        [--samples 16] [--seq-len 128] [--eval-tokens 4096] [--task-examples 20] [--repeats 2]

On the embedded SmolLM2-135M (P parameters), with one fixed calibration set of the default study's shape
(16 x 128 tokens of bbc-tech): each calibrated method compresses the set and its first quarter, which fits
seconds = a x calibration tokens x P + b x P (a: forward passes and Hessians, b: the per-layer solvers,
which do not grow with the tokens); a calibration-free method gives b alone. Held-out perplexity, and KL
against the dense model, give seconds / (tokens x P); the default study's two offline tasks through lm-eval
seconds / (request tokens x P), and their tokens per request. The CPU's dense matmul throughput in the
forward dtype is the ratio by which `plan` derives GPU seconds from these. Each is the fastest of
--repeats runs, up to twice as many while other processes use over 15% of the CPU (other work only slows;
their share is printed and recorded). About 5 minutes on 2 idle Zen 5 cores. Forward passes run in the
pipeline's dtype (bf16 where the CPU has native bf16, else fp32), compression math in fp32. The converted
model is cached under $CALIB_ASSETS_ROOT (default ./artifacts).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from calib_assets.plan import COSTS_FILE, EMBEDDED_ARCHITECTURES, llama_parameters  # noqa: E402
from compression import METHODS  # noqa: E402  (benchmarks/compression.py: the default study's settings)

DEFAULT_METHODS = ("gptq", "spqr", "sparsegpt", "wanda", "rtn", "magnitude", "awq")  # the default study's, and ci's awq
GPU = {"tflops": 989.0, "unit": "TFLOP/s",
       "source": "NVIDIA H100 SXM5 datasheet, bf16 dense Tensor Core (1,979 with sparsity); H200 SXM: the same",
       "kind": "datasheet figure, not measured: GPU seconds are derived from the CPU constants"}


def cpu_name() -> str:
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return (f"{fields.get('model name', platform.processor())} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}), {os.cpu_count()} cores")


def matmul_tflops(dtype, n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e12


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy ticks of the machine, all its ticks, this process's ticks, all threads)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    mine = sum(map(int, Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, mine


OTHERS: list[float] = []  # others' share of the machine's CPU during each kept measurement
CONTENDED = 0.15


def best_of(repeats: int, call, setup=lambda: None) -> float:
    """The fastest of `repeats` runs of call(setup()), setup untimed: other work on the machine only slows.
    Up to `repeats` more runs while others used over CONTENDED of the CPU during the fastest; that share
    is kept in OTHERS."""
    runs: list[tuple[float, float]] = []
    while len(runs) < repeats or (len(runs) < 2 * repeats and min(runs)[1] > CONTENDED):
        prepared = setup()
        before = _cpu_ticks()
        seconds = _timed(lambda prepared=prepared: call(prepared))
        busy, total, mine = (end - start for end, start in zip(_cpu_ticks(), before))
        runs.append((seconds, max(0.0, (busy - mine) / max(total, 1))))
    seconds, others = min(runs)
    OTHERS.append(others)
    return seconds


def compression_seconds(base, ids, config, forward_dtype, repeats: int) -> float:
    from calib_assets.compression import compress_model

    return best_of(repeats, lambda model: compress_model(model, ids, config, forward_dtype=forward_dtype, batch_size=8),
                   lambda: copy.deepcopy(base))


def measure(args) -> dict:
    import numpy as np
    import torch

    from _common import embedded_model_folder, fixed_inputs
    from calib_assets.compression import make_method_config
    from calib_assets.compute import resolve_forward_dtype
    from calib_assets.evaluation import (
        build_cloze_task,
        build_next_sentence_task,
        evaluate_tasks_detailed,
        next_token_kl,
        perplexity,
        write_lm_eval_task,
    )
    from calib_assets.models import load_model
    from calib_assets.sources import build_corpus, parse_source_spec
    from calib_assets.steps import BOOTSTRAP_ITERS
    from calib_assets.study import load_study
    from evaluation import request_tokens

    load_before = os.getloadavg()[0]
    forward_dtype = resolve_forward_dtype("auto", "cpu")
    folder = embedded_model_folder()
    base, tokenizer = load_model(folder)
    parameters = sum(p.numel() for p in base.parameters())
    expected = llama_parameters(**EMBEDDED_ARCHITECTURES["smollm2-135m"])
    if parameters != expected:
        raise SystemExit(f"smollm2-135m has {parameters} parameters, plan.EMBEDDED_ARCHITECTURES gives {expected}")
    costs: dict[str, Any] = {"compression": {}, "evaluation": {}, "offline_task_tokens": {}}
    with tempfile.TemporaryDirectory() as tmp:
        calibration, heldout = fixed_inputs(args.source, args.samples, args.seq_len, args.eval_tokens, Path(tmp))
        ids, stream = torch.from_numpy(np.load(calibration)), np.load(heldout).tolist()
        smaller = ids[: max(1, args.samples // 4)]
        for name in args.methods:
            method, options = METHODS[name]
            config = make_method_config(method, options)
            sets = [ids, smaller] if config.needs_calibration else [None]
            runs = [{"calibration_tokens": 0 if part is None else part.numel(),
                     "seconds": compression_seconds(base, part, config, forward_dtype, args.repeats)} for part in sets]
            per_token, per_parameter = fit(runs, parameters)
            costs["compression"][method] = {
                "label": config.label(), "date": datetime.date.today().isoformat(),
                "per_token": {"value": per_token, "unit": "s / (calibration token x parameter)"},
                "per_parameter": {"value": per_parameter, "unit": "s / parameter"}, "runs": runs,
                "other_cpu_share": max(OTHERS[-len(runs):])}
            print(f"{config.label():<16} " + ", ".join(f"{r['seconds']:.1f} s on {r['calibration_tokens']} tokens"
                                                      for r in runs)
                  + f": {per_token:.3e} s/(token x param) + {per_parameter:.3e} s/param "
                    f"(others: {max(OTHERS[-len(runs):]):.0%} of the CPU)", flush=True)
        dense = base.to(dtype=forward_dtype)
        other = copy.deepcopy(dense)
        scored = perplexity(dense, stream, seq_len=512, batch_size=8).n_tokens
        seconds = best_of(args.repeats, lambda _: perplexity(dense, stream, seq_len=512, batch_size=8))
        _evaluation(costs, "perplexity", seconds, scored, parameters, "s / (scored token x parameter)")
        windows = [stream[i:i + 512] for i in range(0, len(stream) - 511, 512)]
        seconds = best_of(args.repeats, lambda _: next_token_kl(dense, other, windows, 8))
        _evaluation(costs, "kl", seconds, len(windows) * 512, parameters,
                    "s / (window token x parameter), both models' forwards included")
        corpus = build_corpus(parse_source_spec(args.source))
        heldout_df = corpus[corpus["split"] == "heldout"]
        builders: dict[str, Any] = {"cloze": build_cloze_task, "next_sentence": build_next_sentence_task}
        specs, request_total = [], 0
        for entry in load_study("default").offline_tasks:
            task_dir = Path(tmp) / entry.name
            task = builders[entry.kind](heldout_df, n_examples=args.task_examples, seed=entry.seed,
                                        **entry.builder_options())
            specs.append(write_lm_eval_task(task, task_dir, entry.name))
            requests, task_tokens = request_tokens(task_dir, tokenizer)
            request_total += task_tokens
            costs["offline_task_tokens"][entry.kind] = {
                "tokens_per_request": task_tokens / requests, "unit": "tokens (SmolLM2 tokenizer)",
                "requests": requests, **entry.builder_options()}
        seconds = best_of(args.repeats, lambda _: evaluate_tasks_detailed(dense, tokenizer, specs, batch_size=8,
                                                                          bootstrap_iters=BOOTSTRAP_ITERS))
        _evaluation(costs, "task", seconds, request_total, parameters,
                    "s / (lm-eval request token x parameter)")
    costs["cpu_matmul_tflops"] = {"value": matmul_tflops(forward_dtype), "unit": "TFLOP/s",
                                  "note": f"best of 5 square {str(forward_dtype).removeprefix('torch.')} matmuls, "
                                          "n=2048, torch's threads"}
    costs["measured_on"] = {
        "cpu": cpu_name(), "date": datetime.date.today().isoformat(),
        "forward_dtype": str(forward_dtype).removeprefix("torch."), "math_dtype": "float32",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average": f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)",
        "other_processes_cpu_share": f"at most {max(OTHERS):.0%}, mean {sum(OTHERS) / len(OTHERS):.0%} of the "
                                     "machine's CPU during the kept measurements (other work slows every figure)",
        "model": f"smollm2-135m ({parameters} parameters)",
        "calibration": f"{args.samples} x {args.seq_len} tokens of {args.source} and the first "
                       f"{max(1, args.samples // 4)} of them",
        "repeats": f"fastest of {args.repeats} to {2 * args.repeats}",
        "command": "benchmarks/plan_costs.py " + " ".join(sys.argv[1:])}
    return costs


def fit(runs: list[dict], parameters: int) -> tuple[float, float]:
    """seconds = a x tokens x P + b x P through two runs (one for a calibration-free method: a = 0); a and b
    are kept >= 0, as timing noise could make either negative."""
    (hi, lo) = runs if len(runs) == 2 else (runs[0], None)
    if lo is None:
        return 0.0, hi["seconds"] / parameters
    slope = (hi["seconds"] - lo["seconds"]) / ((hi["calibration_tokens"] - lo["calibration_tokens"]) * parameters)
    per_token = max(0.0, slope)
    return per_token, max(0.0, hi["seconds"] / parameters - per_token * hi["calibration_tokens"])


def _evaluation(costs: dict, kind: str, seconds: float, tokens: int, parameters: int, unit: str) -> None:
    costs["evaluation"][kind] = {"value": seconds / (tokens * parameters), "unit": unit, "seconds": seconds,
                                 "tokens": tokens, "other_cpu_share": OTHERS[-1]}
    print(f"{kind:<16} {seconds:7.1f} s  {seconds / (tokens * parameters):.3e} {unit} ({tokens} tokens; others: "
          f"{OTHERS[-1]:.0%} of the CPU)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma list of {[m for m in METHODS if m != 'awq-ss8']}")
    parser.add_argument("--source", default="bbc-tech")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for perplexity and KL")
    parser.add_argument("--task-examples", type=int, default=20, help="examples per offline task")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the fastest is kept")
    parser.add_argument("--write", action="store_true", help=f"update {COSTS_FILE}")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    if unknown := sorted(set(args.methods) - set(METHODS) | ({"awq-ss8"} & set(args.methods))):
        parser.error(f"unknown methods {unknown}; allowed: {[m for m in METHODS if m != 'awq-ss8']}")
    if args.samples < 2 or args.seq_len < 2 or args.eval_tokens < 1024 or min(args.task_examples, args.repeats) < 1:
        parser.error(f"--samples {args.samples} >= 2, --seq-len {args.seq_len} >= 2, --eval-tokens {args.eval_tokens} "
                     f">= 1024, --task-examples {args.task_examples} >= 1 and --repeats {args.repeats} >= 1 are "
                     "required")
    costs = measure(args)
    matmul, dtype = costs["cpu_matmul_tflops"]["value"], costs["measured_on"]["forward_dtype"]
    print(f"cpu matmul       {matmul:.3f} TFLOP/s ({dtype})")
    print(json.dumps(costs["measured_on"]))
    if args.write:
        old = json.loads(COSTS_FILE.read_text()) if COSTS_FILE.is_file() else {}
        new = {**old, **costs, "gpu": old.get("gpu", GPU),
               "compression": {**old.get("compression", {}), **costs["compression"]}}
        COSTS_FILE.write_text(json.dumps(new, indent=2) + "\n")
        print(f"wrote {COSTS_FILE}")


if __name__ == "__main__":
    main()
