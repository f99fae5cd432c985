"""Each step kind of a default-study checkpoint against its floor: the FLOPs the step needs, this CPU's
measured matmul throughput in the step's dtype, the floor that gives, and the measured time as a multiple.

    .venv/bin/python benchmarks/floor.py ROOT [--study default] [--calib bbc-tech.s0] [--repeats 1]

ROOT: an artifact root of the study with its upstream stages done (as for profile_checkpoint.py); each
calibrated method's checkpoint of `--calib` and one evaluation (the first method's) are computed in a
scratch copy of it (after one untimed compression of another set, which pays the first-time imports and
allocations that `make run` pays once), timed by the steps' own spans (calib_assets.timing). FLOPs, from
the model's shapes:
  forward of T tokens   2 x T x (decoder linear weights) + 4 x layers x hidden x (sum over sequences of
                        length^2) for attention (scores and values, the whole square: what SDPA computes),
                        plus 2 x hidden x vocab per position the output head is applied to;
  calibration passes    two forwards of the calibration tokens through every decoder layer (statistics,
                        then the compressed layer's outputs for the next one), plus for the Hessian
                        methods (GPTQ, SpQR, SparseGPT) the Hessian sums, 2 x T x d_in^2 per group of
                        linears sharing an input;
  method math (GPTQ, SparseGPT)  per group of linears sharing an input: d_in^3 (the inverse factor) +
                        2 x d_out x d_in^2 (the error fed to the remaining columns); Wanda has none worth
                        counting (a norm and a sort), so its floor is that of its calibration passes.
Throughput: the median of timed matmuls of the model's own shapes (tokens x hidden by hidden x 3 x
intermediate) in the forward dtype, and of d_in x d_in by d_in x d_out in fp32 for the method math.
Targets (the default-study issue): evaluation <= 2x its floor; GPTQ, SparseGPT, Wanda <= 3x; SpQR <= 2x
GPTQ's method math on the same layers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

TARGETS = {"evaluation": 2.0, "gptq": 3.0, "sparsegpt": 3.0, "wanda": 3.0}


def matmul_gflops(m: int, k: int, n: int, dtype, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(times) / 1e9


def model_shapes(model) -> dict:
    config = model.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    inter = config.intermediate_size
    # linears grouped by their input, as the engine stacks them: (d_in, d_out)
    groups = [(hidden, hidden + 2 * kv), (hidden, hidden), (hidden, 2 * inter), (inter, hidden)]
    return {"hidden": hidden, "layers": layers, "vocab": config.vocab_size, "groups": groups,
            "linear_weights": layers * sum(d_in * d_out for d_in, d_out in groups), "intermediate": inter}


def forward_flops(shapes: dict, lengths: list[int], head_positions: int) -> float:
    tokens = sum(lengths)
    attention = 4 * shapes["layers"] * shapes["hidden"] * sum(length ** 2 for length in lengths)
    return 2 * tokens * shapes["linear_weights"] + attention + 2 * shapes["hidden"] * shapes["vocab"] * head_positions


def calibration_flops(shapes: dict, n_samples: int, seq_len: int, hessians: bool) -> float:
    passes = 2 * forward_flops(shapes, [seq_len] * n_samples, 0)
    sums = shapes["layers"] * sum(2 * n_samples * seq_len * d_in ** 2 for d_in, _ in shapes["groups"])
    return passes + (sums if hessians else 0.0)


def obs_math_flops(shapes: dict) -> float:
    return shapes["layers"] * sum(d_in ** 3 + 2 * d_out * d_in ** 2 for d_in, d_out in shapes["groups"])


class TokenCounter:
    """Counts what lm-eval asks the scorer: sequence lengths and continuation positions."""

    def __init__(self):
        self.lengths: list[int] = []
        self.head_positions = 0

    def install(self):
        from calib_assets.evaluation.loglikelihood import ContinuationOnlyLM

        original, counter = ContinuationOnlyLM._loglikelihood_tokens, self

        def counted(lm, requests, **kwargs):
            for _, context, continuation in requests:
                counter.lengths.append(min(len(context) + len(continuation) - 1, lm.max_length))
                counter.head_positions += len(continuation)
            return original(lm, requests, **kwargs)

        ContinuationOnlyLM._loglikelihood_tokens = counted


def measure(study, root: Path, calib: str) -> tuple[dict, dict]:
    """Per calibrated method: the compression spans; and the spans of the first method's evaluation."""
    from calib_assets import timing
    from calib_assets.steps import evaluate_variant, forward_placement, materialize_checkpoint

    device, dtype = forward_placement(study)
    warm_up = next(key for key in study.calib_keys if key != calib)  # first-time imports and allocations
    materialize_checkpoint(study, _first_calibrated(study), warm_up, root, device=device, forward_dtype=dtype,
                           log=lambda line: None)
    compression = {}
    for variant in study.variant_keys:
        _, method = study.parse_variant(variant)
        if method is None or not method.needs_calibration:
            continue
        timing.reset()
        started = time.perf_counter()
        materialize_checkpoint(study, variant, calib, root, device=device, forward_dtype=dtype, log=lambda line: None)
        compression[method.config.method] = {"total": time.perf_counter() - started, **dict(
            (name, seconds) for name, (seconds, _) in timing.tally().items())}
    first = _first_calibrated(study)
    timing.reset()
    started = time.perf_counter()
    evaluate_variant(study, first, calib, root, device=device, forward_dtype=dtype, run_id="floor")
    evaluation = {"total": time.perf_counter() - started,
                  **{name: seconds for name, (seconds, _) in timing.tally().items()}}
    return compression, evaluation


def _first_calibrated(study) -> str:
    return next(variant for variant in study.variant_keys
                if (method := study.parse_variant(variant)[1]) is not None and method.needs_calibration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--study", default="default")
    parser.add_argument("--calib")
    args = parser.parse_args()

    import torch

    from _common import scratch_copy_of_root
    from calib_assets.compression.engine import CALIBRATION_PASSES, METHOD_MATH
    from calib_assets.evaluation import heldout_token_stream
    from calib_assets.steps import forward_placement, load_base, load_corpus_split
    from calib_assets.study import load_study

    study = load_study(args.study)
    calib = args.calib or study.calib_keys[0]
    if calib not in study.calib_keys:
        raise SystemExit(f"--calib {calib!r} is not a calibration set of {study.name!r}; allowed: {study.calib_keys}")
    _, dtype = forward_placement(study)
    with tempfile.TemporaryDirectory(prefix="floor-") as scratch:
        root = scratch_copy_of_root(args.root, study.name, Path(scratch), "checkpoints", "evaluations")
        model, tokenizer, _ = load_base(study, root, study.models[0].name)
        shapes = model_shapes(model)
        counter = TokenCounter()
        counter.install()
        compression, evaluation = measure(study, root, calib)
        spec = study.evaluation
        ppl_lengths = []
        for dataset in study.eval_datasets + study.extra_dataset_names:
            texts = load_corpus_split(root, dataset, "heldout")["text"].tolist()
            windows = len(heldout_token_stream(texts, tokenizer, spec.max_tokens)) // spec.seq_len
            ppl_lengths += [spec.seq_len] * windows
    hidden, inter = shapes["hidden"], shapes["intermediate"]
    forward_rate = statistics.median(matmul_gflops(1024, hidden, n, dtype) for n in (hidden, 3 * inter, hidden))
    fp32_rate = statistics.median(matmul_gflops(d_in, d_in, d_out, torch.float32) for d_in, d_out in shapes["groups"])
    kl_windows = [spec.seq_len] * (spec.kl_tokens // spec.seq_len) if spec.kl_tokens else []
    n_samples, seq_len = study.calib_size(calib), study.calibration.seq_len
    floors = {  # step kind -> (FLOPs, rate in GFLOP/s, measured seconds)
        "evaluation: held-out perplexity": (forward_flops(shapes, ppl_lengths, sum(ppl_lengths)), forward_rate,
                                            evaluation.get("evaluation: held-out perplexity", 0.0)),
        "evaluation: KL to the dense model (its load included)": (
            2 * forward_flops(shapes, kl_windows, sum(kl_windows)), forward_rate,
            evaluation.get("evaluation: KL to the dense model (its load included)", 0.0)),
        "evaluation: tasks (lm-eval)": (forward_flops(shapes, counter.lengths, counter.head_positions), forward_rate,
                                        evaluation.get("evaluation: tasks (lm-eval)", 0.0)),
    }
    rows = []
    for kind, (flops, rate, seconds) in floors.items():
        rows.append((kind, flops, rate, flops / rate / 1e9, seconds))
    evaluation_floor = sum(row[3] for row in rows)
    rows.append(("evaluation (whole step)", sum(row[1] for row in rows), forward_rate, evaluation_floor,
                 evaluation["total"]))
    for method, spans in compression.items():
        hessian_method = method in {"gptq", "sparsegpt", "spqr"}
        calibration = calibration_flops(shapes, n_samples, seq_len, hessians=hessian_method)
        math = obs_math_flops(shapes) if hessian_method else 0.0
        rows.append((f"{method}: calibration forward passes", calibration, forward_rate,
                     calibration / forward_rate / 1e9, spans.get(CALIBRATION_PASSES, 0.0)))
        if math:
            rows.append((f"{method}: method math", math, fp32_rate, math / fp32_rate / 1e9,
                         spans.get(METHOD_MATH, 0.0)))
        floor = calibration / forward_rate / 1e9 + math / fp32_rate / 1e9
        rows.append((f"{method} (whole compression step)", calibration + math, forward_rate, floor, spans["total"]))
    print(f"{study.name} | {calib}: matmul throughput {forward_rate:.0f} GFLOP/s in {dtype} (forward shapes), "
          f"{fp32_rate:.0f} GFLOP/s in fp32 (method-math shapes); {len(counter.lengths)} task requests")
    print(f"\n{'step kind':<58} {'GFLOP':>9} {'floor s':>8} {'measured s':>11} {'x floor':>8}")
    for kind, flops, _, floor, seconds in rows:
        multiple = seconds / floor if floor else float("nan")
        print(f"{kind:<58} {flops / 1e9:9.1f} {floor:8.2f} {seconds:11.2f} {multiple:8.1f}")
    print()
    verdicts: dict[str, str] = {}
    for kind, _, _, floor, seconds in rows:
        name = kind.split(" ")[0].rstrip(":")
        if "whole" in kind and name in TARGETS:
            verdicts[name] = (f"{seconds / floor:.1f}x its floor, target <= {TARGETS[name]:.0f}x: "
                              f"{'met' if seconds / floor <= TARGETS[name] else 'missed'}")
    for name, verdict in verdicts.items():
        print(f"{name}: {verdict}")
    if "spqr" in compression and "gptq" in compression:
        ratio = compression["spqr"].get(METHOD_MATH, 0.0) / max(compression["gptq"].get(METHOD_MATH, 0.0), 1e-9)
        print(f"spqr: method math {ratio:.1f}x GPTQ's on the same layers, target <= 2x: "
              f"{'met' if ratio <= 2 else 'missed'}")


if __name__ == "__main__":
    main()
