"""A study's plan, computed from the Study alone (no model is loaded, nothing is materialized): partitions
per asset, Dagster runs and steps per stage, and an estimate of GPU-hours and of the wall time on K GPUs.

Cost model: compressing takes (a_method x calibration tokens + b_method) x parameters seconds (b: the
per-layer solvers; a = 0 for a calibration-free method), an evaluation c_eval x evaluated tokens x
parameters; the constants are measured on a CPU by benchmarks/plan_costs.py (calib_assets/plan_costs.json).
GPU seconds are derived from them: CPU seconds x measured CPU matmul throughput / the GPU's bf16 dense
throughput."""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import Any

from calib_assets.models import EmbeddedModel, HubModel, RandomLlama
from calib_assets.study import LmEvalTaskEntry, Study

COSTS_FILE = Path(__file__).with_name("plan_costs.json")
DBT = "dbt"

# calib_assets.defs.jobs.stages(), in order: (job, assets, partitions definition; None: unpartitioned).
STAGES = (
    ("prepare_models", ("base_model",), "models"),
    ("prepare_corpora", ("text_corpus",), "corpora"),
    ("tokenize_pools", ("calibration_pool",), "pools"),
    ("build_calibration_sets", ("calibration_set", "calib_inspection"), "calibration"),
    ("build_tasks", ("offline_tasks",), None),
    ("baselines", ("baseline_model", "baseline_eval"), "baselines"),
    ("compress_and_evaluate", ("compressed_model", "evaluation"), "compressed"),
    ("findings", ("set_descriptors", "eval_results", DBT, "findings_report"), None),
)

# Published parameter counts (model cards, the LLaMA and OPT papers), by hub id.
HUB_PARAMETERS = {
    "huggyllama/llama-7b": 6.74e9, "huggyllama/llama-13b": 13.0e9, "huggyllama/llama-30b": 32.5e9,
    "lmsys/vicuna-7b-v1.3": 6.74e9, "lmsys/vicuna-13b-v1.3": 13.0e9, "lmsys/vicuna-33b-v1.3": 32.5e9,
    "facebook/opt-6.7b": 6.66e9, "facebook/opt-13b": 12.9e9, "facebook/opt-30b": 30.0e9,
}
# The Llama config each embedded GGUF converts to (benchmarks/plan_costs.py checks the count on the loaded model).
EMBEDDED_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3,
                     "vocab": 49152, "tied": True},
}
RANDOM_LLAMA_VOCAB = 257  # models.byte_level_tokenizer: 256 bytes + <eos>, untied embeddings

# lm-eval tasks: (examples of the split lm-eval scores, from the dataset cards; requests per example, i.e.
# answer choices, 1 for a loglikelihood task; tokens per request: an ASSUMPTION, a rough LLaMA-tokenizer
# estimate of context + continuation, not measured).
LM_EVAL_TASKS = {
    "arc_easy": (2376, 4, 35), "arc_challenge": (1172, 4, 40), "boolq": (3270, 2, 150),
    "hellaswag": (10042, 4, 80), "lambada_openai": (5153, 1, 100), "openbookqa": (500, 4, 20),
    "piqa": (1838, 2, 40), "rte": (277, 2, 70), "storycloze_2016": (1871, 2, 60), "winogrande": (1267, 2, 30),
}
LM_EVAL_UNKNOWN = (1000, 4, 64)  # an ASSUMPTION for an lm-eval task missing from the table


class PlanError(ValueError):
    """Input the plan cannot use; the message names the value and what is allowed."""


def partition_counts(study: Study) -> dict[str | None, int]:
    """Partitions of each partitions definition of calib_assets.defs.partitions.StudyPartitions."""
    models, calibs = len(study.models), len(study.calib_keys)
    return {"models": models, "corpora": len(study.corpus_names), "pools": models * len(study.source_names),
            "calibration": models * calibs, "baselines": len(study.baseline_keys),
            "compressed": len(study.variant_keys) * calibs, None: 1}


def asset_partitions(study: Study) -> dict[str, int]:
    counts = partition_counts(study)
    return {asset: counts[partitions] for _, assets, partitions in STAGES for asset in assets}


def stage_runs(study: Study) -> list[dict]:
    """One run per partition of a stage's job, one step per asset of the job (dbt's models are one op)."""
    counts = partition_counts(study)
    return [{"stage": job, "assets": list(assets), "runs": counts[partitions], "steps_per_run": len(assets),
             "steps": counts[partitions] * len(assets)} for job, assets, partitions in STAGES]


def parse_params(items: list[str] | None) -> dict[str, float]:
    """--params NAME=COUNT values (NAME: a model name of the study or a hub id)."""
    overrides = {}
    for item in items or []:
        name, sep, count = item.partition("=")
        try:
            value = float(count)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value) or value < 1:
            raise PlanError(f"--params {item!r} is not NAME=COUNT with a positive parameter count; allowed: e.g. "
                            "--params llama-7b=6.74e9")
        overrides[name] = value
    return overrides


def llama_parameters(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
                     tied: bool) -> int:
    kv_width = kv_heads * (hidden // heads)
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def model_parameters(study: Study, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Parameters of each model: --params first, then exact counts of the models built here, then the table."""
    overrides = dict(overrides or {})
    names = {m.name for m in study.models} | {m.id for m in study.models if isinstance(m, HubModel)}
    if stray := sorted(set(overrides) - names):
        raise PlanError(f"--params names {stray}, which are not models of study {study.name!r}; allowed: "
                        f"{sorted(names)}")
    counts: dict[str, float] = {}
    for model in study.models:
        hub_id = model.id if isinstance(model, HubModel) else None
        given = overrides.get(model.name, overrides.get(hub_id or ""))
        if given is not None:
            counts[model.name] = given
        elif isinstance(model, EmbeddedModel) and model.name in EMBEDDED_ARCHITECTURES:
            counts[model.name] = llama_parameters(**EMBEDDED_ARCHITECTURES[model.name])
        elif isinstance(model, RandomLlama):
            counts[model.name] = llama_parameters(
                model.hidden_size, model.intermediate_size, model.num_hidden_layers, model.num_attention_heads,
                model.num_key_value_heads, RANDOM_LLAMA_VOCAB, tied=False)
        elif hub_id in HUB_PARAMETERS:
            counts[model.name] = HUB_PARAMETERS[hub_id]
        else:
            what = f"hub id {hub_id!r}" if hub_id else f"a {model.kind} model"
            raise PlanError(f"no parameter count for model {model.name!r} ({what}); give it with --params "
                            f"{model.name}=COUNT (e.g. 7e9); known hub ids: {sorted(HUB_PARAMETERS)}")
    return counts


def load_costs(path: Path = COSTS_FILE) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise PlanError(f"cost constants {str(path)!r} cannot be read ({error}); write them with "
                        "`benchmarks/plan_costs.py --write`") from None


def compression_seconds(costs: dict, method: str, tokens: int, parameters: float) -> float:
    """a x calibration tokens x parameters + b x parameters (b: the per-layer solvers, whatever the tokens)."""
    entry = costs["compression"].get(method)
    if entry is None:
        raise PlanError(f"no cost constant for method {method!r} in plan_costs.json; allowed: "
                        f"{sorted(costs['compression'])} (measure it: benchmarks/plan_costs.py --methods {method} "
                        "--write)")
    return (entry["per_token"]["value"] * tokens + entry["per_parameter"]["value"]) * parameters


def evaluation_tokens(study: Study, costs: dict, with_kl: bool) -> tuple[dict[str, float], list[str]]:
    """Tokens one evaluation scores, by kind (perplexity, kl, task), and the assumptions behind them."""
    spec, notes = study.evaluation, []
    perplexity = (len(study.eval_datasets) + len(study.extra_dataset_names)) * spec.max_tokens
    kl = spec.kl_tokens // spec.seq_len * spec.seq_len if with_kl else 0
    task = 0.0
    for entry in spec.tasks:
        if isinstance(entry, LmEvalTaskEntry):
            examples, choices, per_request = LM_EVAL_TASKS.get(entry.name, LM_EVAL_UNKNOWN)
            if entry.name not in LM_EVAL_TASKS:
                notes.append(f"lm-eval task {entry.name!r}: size unknown offline, ASSUMED {examples} examples x "
                             f"{choices} requests x {per_request} tokens")
        else:
            measured = costs["offline_task_tokens"][entry.kind]
            examples, choices = entry.n_examples, getattr(entry, "n_choices", 1)
            per_request = measured["tokens_per_request"] * _offline_scale(entry, measured)
        task += min(examples, spec.limit or examples) * choices * per_request
    if any(isinstance(entry, LmEvalTaskEntry) for entry in spec.tasks):
        notes.append("lm-eval task sizes: split sizes from the dataset cards, tokens per request ASSUMED "
                     "(calib_assets/plan.py LM_EVAL_TASKS)")
    if study.offline_tasks:
        notes.append("offline task tokens per request: measured with the SmolLM2 tokenizer, scaled by "
                     "max_context_words (cloze) or context_sentences + 1 (next_sentence)")
    if perplexity:
        notes.append(f"perplexity: at most evaluation.max_tokens={spec.max_tokens} tokens per dataset counted")
    return {"perplexity": perplexity, "kl": kl, "task": task}, notes


def _offline_scale(entry, measured: dict) -> float:
    if entry.kind == "cloze":
        return entry.max_context_words / measured["max_context_words"]
    return (entry.context_sentences + 1) / (measured["context_sentences"] + 1)


def evaluation_seconds(study: Study, costs: dict, parameters: float, with_kl: bool) -> float:
    tokens, _ = evaluation_tokens(study, costs, with_kl)
    return sum(costs["evaluation"][kind]["value"] * count * parameters for kind, count in tokens.items())


def partition_seconds(study: Study, costs: dict, parameters: dict[str, float]) -> dict[str, list[float]]:
    """CPU seconds (measured constants) of each partition of each stage; 0 for work the model leaves out."""
    seq_len = study.calibration.seq_len
    calib_tokens = [study.calib_size(key) * seq_len for key in study.calib_keys]
    ppl = costs["evaluation"]["perplexity"]["value"]
    seconds = {job: [0.0] * runs for job, runs in ((s["stage"], s["runs"]) for s in stage_runs(study))}
    if study.calibration.descriptors:  # the base model's perplexity of every calibration window
        seconds["build_calibration_sets"] = [ppl * tokens * parameters[m.name]
                                             for m in study.models for tokens in calib_tokens]
    seconds["baselines"] = [
        (compression_seconds(costs, method.config.method, 0, parameters[m.name]) if method else 0.0)
        + evaluation_seconds(study, costs, parameters[m.name], with_kl=method is not None)
        for m in study.models for method in [None, *study.calibration_free_methods]]
    seconds["compress_and_evaluate"] = [
        compression_seconds(costs, method.config.method, tokens, parameters[m.name])
        + evaluation_seconds(study, costs, parameters[m.name], with_kl=True)
        for m in study.models for method in study.calibrated_methods for tokens in calib_tokens]
    return seconds


def makespan(durations: list[float], workers: int) -> float:
    """Greedy longest-first list schedule of independent jobs on `workers` identical workers."""
    loads = [0.0] * min(workers, max(len(durations), 1))
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def check_gpus(gpus) -> int:
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise PlanError(f"--gpus {gpus!r} is not allowed; allowed: an integer >= 1")
    return gpus


def check_gpu_tflops(tflops) -> float | None:
    if tflops is not None and not (isinstance(tflops, (int, float)) and math.isfinite(tflops) and tflops > 0):
        raise PlanError(f"--gpu-tflops {tflops!r} is not allowed; allowed: a positive number of TFLOP/s, e.g. 989")
    return tflops


def build_plan(study: Study, gpus: int = 1, gpu_tflops: float | None = None,
               params: dict[str, float] | None = None, costs: dict | None = None) -> dict:
    """Everything `calib-assets plan` prints, as plain data (seconds, counts)."""
    gpus, gpu_tflops = check_gpus(gpus), check_gpu_tflops(gpu_tflops)
    costs = costs or load_costs()
    parameters = model_parameters(study, params)
    gpu = dict(costs["gpu"], tflops=gpu_tflops or costs["gpu"]["tflops"], given=gpu_tflops is not None)
    ratio = costs["cpu_matmul_tflops"]["value"] / gpu["tflops"]
    cpu_seconds = partition_seconds(study, costs, parameters)
    stages = []
    for stage in stage_runs(study):
        durations = [seconds * ratio for seconds in cpu_seconds[stage["stage"]]]
        stages.append({**stage, "cpu_seconds": sum(cpu_seconds[stage["stage"]]), "gpu_seconds": sum(durations),
                       "wall_seconds": makespan(durations, gpus), "longest_partition_seconds": max(durations)})
    notes = evaluation_tokens(study, costs, with_kl=True)[1]
    notes.append("not modelled (0 s): downloads, model loading, tokenization, sampling and selection, "
                 "generated sources, dbt and the report")
    return {
        "study": study.name, "gpus": gpus, "parameters": parameters, "assets": asset_partitions(study),
        "stages": stages, "gpu": gpu, "gpu_per_cpu_second": ratio, "cpu": costs["measured_on"],
        "cpu_hours": sum(s["cpu_seconds"] for s in stages) / 3600,
        "gpu_hours": sum(s["gpu_seconds"] for s in stages) / 3600,
        "wall_hours": sum(s["wall_seconds"] for s in stages) / 3600,
        "runs": sum(s["runs"] for s in stages), "steps": sum(s["steps"] for s in stages), "notes": notes,
    }


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_plan(plan: dict) -> str:
    gpu, k = plan["gpu"], plan["gpus"]
    lines = [f"study {plan['study']!r}: {plan['runs']} runs, {plan['steps']} steps in {len(plan['stages'])} stages",
             "parameters: " + ", ".join(f"{name} {count:.3g}" for name, count in plan["parameters"].items()),
             "", "partitions per asset:"]
    lines += [f"  {asset:<24} {count:>7}" for asset, count in plan["assets"].items()]
    lines += ["", f"  {'stage':<24} {'runs':>7} {'steps':>7} {'GPU time':>12} {f'wall on {k} GPU(s)':>18}"]
    for s in plan["stages"]:
        lines.append(f"  {s['stage']:<24} {s['runs']:>7} {s['steps']:>7} {format_duration(s['gpu_seconds']):>12} "
                     f"{format_duration(s['wall_seconds']):>18}")
    total, wall = format_duration(plan["gpu_hours"] * 3600), format_duration(plan["wall_hours"] * 3600)
    lines.append(f"  {'total':<24} {plan['runs']:>7} {plan['steps']:>7} {total:>12} {wall:>18}")
    source = "given with --gpu-tflops" if gpu["given"] else gpu["source"]
    lines += ["", f"estimate: {plan['gpu_hours']:,.4g} GPU-hours; wall time on {k} GPU(s) "
                  f"{format_duration(plan['wall_hours'] * 3600)} (stages one after another, partitions of a stage "
                  "longest first on the free GPU)",
              f"  GPU figures are DERIVED, not measured, and optimistic: CPU-measured seconds x CPU matmul "
              f"{plan['gpu_per_cpu_second'] * gpu['tflops']:.3g} TFLOP/s / GPU {gpu['tflops']:g} TFLOP/s ({source}); "
              "latency-bound work (solver loops, lm-eval batching) does not speed up by that ratio (docs/plan.md)",
              f"  the same work on one CPU like the one measured ({plan['cpu']['cpu']}, {plan['cpu']['date']}): "
              f"{format_duration(plan['cpu_hours'] * 3600)}"]
    lines += ["assumptions:"] + [f"  - {note}" for note in plan["notes"]]
    return "\n".join(lines)
