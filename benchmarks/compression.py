"""Each compression method on the embedded model with one fixed calibration set: wall time, peak memory,
held-out perplexity; with llm-compressor installed in .venv-llmc, the same runs side by side.

    .venv/bin/python benchmarks/compression.py [--methods gptq,wanda] [--samples 32] [--seq-len 512] [--low-memory]
        [--repeats 2] [--sets 0,1,2]

Every method runs in its own process. Seconds and peak memory are those of the compression call alone;
the dense row's are those of one layer-wise pass of the uncompressed model through the engine (same
forward dtype and batches), and the "passes" columns give each run's seconds in units of that pass:
Wanda's floor is about 1.8 (a statistics pass that stops before down_proj, then the rerun). Memory is
the anonymous RSS sampled every 5 ms while it runs (the memory-mapped weights file is page cache and
left out), "net" subtracts the interpreter, the libraries, the tokenizer and the modeling code
(measured before the model is loaded, `_common.library_baseline_mb`), and "budget" is the issue's bound:
twice the bf16 model plus the calibration activations. With --low-memory our runs hold the model in
bf16, as on a GPU (each layer compressed from an fp32 copy and calibrated in the forward dtype, its
results rounded once to bf16), hand freed memory back after each phase of a layer and calibrate 4
samples per forward pass (both tools): every method then stays within the budget (docs/benchmarks.md).
llm-compressor's runs load the model in the resolved forward dtype, so both tools calibrate in the
same dtype. --repeats N alternates the two tools N times and reports the best time and the highest
memory. Perplexity is scored afterwards with the same code for both tools. --sets 0,1,2 runs both
tools on several disjoint calibration sets of the source and compares mean time and mean perplexity:
one set's perplexity after 3-bit or 2:4 compression moves by up to 10% with a float-level change
(summation order, attention kernel), more than the tools differ, so one run cannot tell them apart.
Targets: at most 0.5x llm-compressor's time at equal or better perplexity. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeGuard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> (method, params): the issue's settings on a model whose hidden size (576) needs groups of 64
METHODS = {
    "gptq": ("gptq", {"bits": 3, "group_size": 64}),
    "sparsegpt": ("sparsegpt", {"n": 2, "m": 4}),
    "wanda": ("wanda", {"n": 2, "m": 4}),
    "spqr": ("spqr", {"bits": 3, "group_size": 16}),
    "awq": ("awq", {"bits": 3, "group_size": 64}),
    "awq-ss8": ("awq", {"bits": 3, "group_size": 64, "search_samples": 8}),  # scale search on 8 samples
    "rtn": ("rtn", {"bits": 3, "group_size": 64}),
    "magnitude": ("magnitude", {"n": 2, "m": 4}),
}
LLMC_PYTHON = HERE.parent / ".venv-llmc" / "bin" / "python"


def run_one(args) -> None:
    """Child process: compress a fresh model with one method, then score it on the held-out stream."""
    import numpy as np
    import torch

    from _common import embedded_model_folder, emit, library_baseline_mb, model_megabytes, peak_rss_mb, sampled_peak_rss
    from calib_assets.compression import compress_model, layerwise_hidden_states, make_method_config
    from calib_assets.compute import resolve_forward_dtype
    from calib_assets.evaluation import perplexity
    from calib_assets.models import load_model

    folder = embedded_model_folder()
    runtime_mb = library_baseline_mb(folder)
    model, _ = load_model(folder, dtype=getattr(torch, args.model_dtype))
    ids = torch.from_numpy(np.load(args.calibration))
    stream = np.load(args.heldout).tolist()
    forward_dtype = resolve_forward_dtype(args.dtype, "cpu")
    with sampled_peak_rss() as memory:
        started = time.perf_counter()
        if args.child == "dense":  # one layer-wise pass, the unit of the "passes" columns
            layerwise_hidden_states(model, ids, forward_dtype=forward_dtype, batch_size=args.batch_size)
        else:
            method, params = METHODS[args.child]
            compress_model(model, ids, make_method_config(method, params), forward_dtype=forward_dtype,
                           batch_size=args.batch_size)
        seconds = time.perf_counter() - started
    hidden = model.config.hidden_size
    activations_mb = ids.numel() * hidden * torch.finfo(forward_dtype).bits / 8 / 2**20
    ppl = perplexity(model.to(getattr(torch, args.eval_dtype)), stream, seq_len=args.seq_len, batch_size=8)
    emit({"tool": "calib_assets", "method": args.child, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
          "compress_peak_mb": memory["peak_mb"], "runtime_mb": runtime_mb,
          "budget_mb": 2 * model_megabytes(model) + activations_mb, "perplexity": ppl.perplexity})


def _spawn(python: Path, script: Path, argv: list[str], timeout: float | None = None) -> dict | None:
    """One child run's RESULT record; None when it failed, {"timed_out": seconds} when it was stopped."""
    try:
        completed = subprocess.run([str(python), str(script), *argv], capture_output=True, text=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {script.name} {' '.join(argv[:2])} stopped after {timeout:.0f} s", file=sys.stderr)
        return {"timed_out": timeout}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        print(f"  {script.name} {' '.join(argv[:2])} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    parser.add_argument("--source", default="bbc-tech")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="forward dtype during compression (math is fp32 regardless); auto: bf16 where the "
                             "CPU runs it natively, else fp32, as the pipeline chooses")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass, both tools")
    parser.add_argument("--model-dtype", default="float32", choices=["bfloat16", "float32"],
                        help="the dtype our run holds the model in (each layer is compressed from an fp32 copy, "
                             "its results rounded once to this dtype; bfloat16 also hands freed memory back "
                             "between layers); llm-compressor's runs hold it in float32")
    parser.add_argument("--low-memory", action="store_true",
                        help="--model-dtype bfloat16 --batch-size 4: the setting closest to the memory budget")
    parser.add_argument("--eval-dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--no-llmcompressor", action="store_true")
    parser.add_argument("--sets", type=_set_list, default=[0],
                        help="comma list of calibration sets of the source (disjoint, as a study's seeds); "
                             "seconds and perplexity are then averaged over them, e.g. 0,1,2")
    parser.add_argument("--llmc-timeout", type=float, default=None, metavar="SECONDS",
                        help="stop an llm-compressor run after this long (its AWQ on a CPU takes hours); the "
                             "row then shows its time as more than SECONDS and the ratio as less than")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per tool and method, the tools alternating; the best time is reported")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--calibration", help=argparse.SUPPRESS)
    parser.add_argument("--heldout", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.low_memory:
        args.model_dtype, args.batch_size = "bfloat16", 4
    if args.repeats < 1 or args.batch_size < 1:
        parser.error(f"--repeats {args.repeats} and --batch-size {args.batch_size} must both be >= 1")
    if args.llmc_timeout is not None and args.llmc_timeout <= 0:
        parser.error(f"--llmc-timeout {args.llmc_timeout} must be a positive number of seconds")
    if args.child:
        return run_one(args)

    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; allowed: {list(METHODS)}")
    from _common import fixed_inputs

    use_llmc = LLMC_PYTHON.exists() and not args.no_llmcompressor
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {k: fixed_inputs(args.source, args.samples, args.seq_len, args.eval_tokens, Path(tmp) / f"set{k}",
                                  calibration_set=k) for k in args.sets}
        one_pass = None  # seconds of one layer-wise pass of the dense model (the dense row)
        for method in ["dense", *methods]:
            ours_sets, their_sets = [], []
            for k in args.sets[:1] if method == "dense" else args.sets:
                calibration, heldout = inputs[k]
                common = ["--calibration", str(calibration), "--heldout", str(heldout), "--seq-len", str(args.seq_len),
                          "--dtype", args.dtype, "--eval-dtype", args.eval_dtype, "--batch-size", str(args.batch_size)]
                ours_runs, their_runs = [], []
                for _ in range(1 if method == "dense" else args.repeats):  # the two tools alternate
                    ours_runs.append(_spawn(Path(sys.executable), Path(__file__),
                                            ["--child", method, *common, "--model-dtype", args.model_dtype]))
                    if use_llmc and method in {"gptq", "sparsegpt", "wanda", "awq"}:
                        their_runs.append(_spawn(LLMC_PYTHON, HERE / "llmcompressor_run.py",
                                                 ["--method", method, *common], args.llmc_timeout))
                ours_sets.append(_combined(ours_runs))
                their_sets.append(_combined(their_runs))
            ours, theirs = _over_sets(ours_sets), _over_sets(their_sets)
            if method == "dense" and ours is not None:
                one_pass = ours["seconds"]
            _print_row(method, ours, theirs, one_pass)
            if len(args.sets) > 1 and method != "dense":
                _print_spread(ours, theirs)
    sets = f"set {args.sets[0]}" if len(args.sets) == 1 else f"sets {','.join(map(str, args.sets))}"
    print(f"\nembedded SmolLM2-135M; calibration: {args.samples} x {args.seq_len} tokens of {args.source} ({sets}), "
          f"{args.batch_size} per forward pass; "
          f"perplexity on {args.eval_tokens} held-out {args.source} tokens in {args.eval_dtype}; "
          f"our model held in {args.model_dtype}; "
          f"forward dtype during compression: {_resolved(args.dtype)}"
          + ("" if use_llmc else "; llm-compressor not run")
          + (f"; seconds: the best of {args.repeats} alternating runs, memory: the highest" if args.repeats > 1 else "")
          + ("; seconds and ppl: means over the sets, memory: the highest" if len(args.sets) > 1 else ""))


def _over_sets(records: list[dict | None]) -> dict | None:
    """One tool's records of one method over several calibration sets: mean seconds and perplexity, the
    highest net memory, and every set's perplexity (`per_set`) for the spread; a stopped run stands
    for the whole method."""
    present = [record for record in records if record is not None]
    stopped = [record for record in present if _timed_out(record)]
    if not present or stopped:
        return next(iter(stopped), None)
    combined = dict(max(present, key=lambda record: record["compress_peak_mb"] - record["runtime_mb"]))
    combined["seconds"] = statistics.fmean(record["seconds"] for record in present)
    combined["per_set"] = [record["perplexity"] for record in present]
    combined["perplexity"] = statistics.fmean(combined["per_set"])
    return combined


def _print_spread(ours: dict | None, theirs: dict | None) -> None:
    def spread(record):
        if record is None:
            return "-"
        if _timed_out(record):
            return f"stopped after {record['timed_out']:.0f} s"
        values = record["per_set"]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{' '.join(f'{v:.2f}' for v in values)} (sd {sd:.2f})"

    print(f"{'':<10} ppl per set: ours {spread(ours)} | llmc {spread(theirs)}", flush=True)


def _set_list(text: str) -> list[int]:
    try:
        sets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of set numbers, e.g. 0,1,2") from None
    if not sets or min(sets) < 0 or len(set(sets)) != len(sets):
        raise argparse.ArgumentTypeError(f"{text!r}: need distinct set numbers >= 0, e.g. 0,1,2")
    return sets


def _combined(runs: list[dict | None]) -> dict | None:
    """Repeated runs of one tool and method as one record: the fastest time (this machine's speed drifts
    by 10-20% within an hour), the highest net memory; a perplexity that moved between runs is flagged."""
    present = [run for run in runs if run is not None]
    finished = [run for run in present if not _timed_out(run)]
    if not finished:
        return next(iter(present), None)
    record = dict(max(finished, key=lambda run: run["compress_peak_mb"] - run["runtime_mb"]))
    record["seconds"] = min(run["seconds"] for run in finished)
    if len({run["perplexity"] for run in finished}) > 1:
        print(f"  perplexity moved between runs: {[round(run['perplexity'], 2) for run in finished]}", file=sys.stderr)
    return record


def _timed_out(record: dict | None) -> TypeGuard[dict]:
    return record is not None and "timed_out" in record


def _resolved(dtype: str) -> str:
    from calib_assets.compute import resolve_forward_dtype

    return str(resolve_forward_dtype(dtype, "cpu")).removeprefix("torch.")


def _print_row(method: str, ours: dict | None, theirs: dict | None, one_pass: float | None) -> None:
    """Seconds and peak RSS of the compression alone (sampled while it runs; the dense row: one
    layer-wise pass of the uncompressed model), perplexity afterwards; "net MB" is that peak less the
    runtime's RSS before the model was loaded, against the budget (twice the bf16 model plus the
    calibration activations in the forward dtype); "passes": seconds in units of that one pass."""
    if method == "dense":
        print(f"{'method':<10} {'seconds':>8} {'passes':>6} {'peak MB':>8} {'net MB':>7} {'budget':>7} {'ppl':>9} | "
              f"{'llmc s':>8} {'passes':>6} {'llmc MB':>8} {'llmc net':>8} {'llmc ppl':>9} {'time ratio':>10}")

    def cell(record, key, fmt):
        if _timed_out(record):
            return f">{record['timed_out']:.0f}" if key == "seconds" else "-"
        return format(record[key], fmt) if record and record.get(key) is not None else "-"

    def passes(record):
        if record is None or not one_pass:
            return "-"
        if _timed_out(record):
            return f">{record['timed_out'] / one_pass:.2f}"
        return f"{record['seconds'] / one_pass:.2f}"

    def net(record):
        if record is None or _timed_out(record):
            return None
        return {"net": record["compress_peak_mb"] - record["runtime_mb"]}

    ratio = "-"
    if ours and _timed_out(theirs):
        ratio = f"<{ours['seconds'] / theirs['timed_out']:.2f}"
    elif ours and theirs and theirs["seconds"]:
        ratio = f"{ours['seconds'] / theirs['seconds']:.2f}"
    print(f"{method:<10} {cell(ours, 'seconds', '8.1f'):>8} {passes(ours):>6} "
          f"{cell(ours, 'compress_peak_mb', '8.0f'):>8} "
          f"{cell(net(ours), 'net', '7.0f'):>7} {cell(ours, 'budget_mb', '7.0f'):>7} "
          f"{cell(ours, 'perplexity', '9.2f'):>9} | {cell(theirs, 'seconds', '8.1f'):>8} "
          f"{passes(theirs):>6} "
          f"{cell(theirs, 'compress_peak_mb', '8.0f'):>8} {cell(net(theirs), 'net', '8.0f'):>8} "
          f"{cell(theirs, 'perplexity', '9.2f'):>9} {ratio:>10}", flush=True)


if __name__ == "__main__":
    main()
