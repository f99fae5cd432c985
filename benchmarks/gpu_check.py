"""The prepared GPU check: the CUDA tests, each method on a random Llama-3.2-1B, llm-compressor beside it,
and the engine's forward throughput, in one script that fits a GPU lease (`make gpu-check`).

    python3 benchmarks/gpu_check.py --out DIR [--cpu] [--methods gptq,wanda] [--no-llmcompressor]
        [--budget-s 450]

It needs torch, transformers, safetensors, numpy, pandas and pyyaml, and pytest for part 1; the library's
other needs (pydantic) and llm-compressor's travel as wheels (`make gpu-wheels`, benchmarks/gpu_wheels.txt).
Nothing is downloaded: the model is randomly initialized with Llama-3.2-1B's shapes and the calibration
set is 128 random sequences of 2,048 tokens.

1. The CUDA tests (calib_assets_tests/test_cuda.py) in a pytest subprocess.
2. Our six methods, one after another in this process on one model held on the host in bf16 (each run
   starts from the same dense weights), bf16 forward passes: wall time, peak GPU memory, the forward
   passes it made (in units of one layer-wise pass of the dense model) and the time they account for,
   and the first decoder layer's reconstruction error.
3. The same runs with llm-compressor's `oneshot` in one subprocess (same weights, same tokens, same
   settings as far as its modifiers allow; benchmarks/llmcompressor_run.py), stopped when the budget
   is spent: what finished is kept.
4. The engine's forward throughput: one layer-wise pass of the dense model over the calibration set, in
   tokens/s and as a share of the bf16 matmul peak measured here.

`--cpu` is the dry run: the same code on a tiny model on the CPU (the CUDA tests with the CPU in the GPU's
place), so that GPU time goes to measuring. Results: DIR/gpu_check.json, DIR/gpu_check.md (also
printed), DIR/cuda_tests.xml and .log, DIR/llmcompressor.log. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name -> (method, params): the settings
METHODS = {
    "gptq": ("gptq", {"bits": 4, "group_size": 128}),
    "sparsegpt": ("sparsegpt", {"n": 2, "m": 4}),
    "wanda": ("wanda", {"n": 2, "m": 4}),
    "spqr": ("spqr", {"bits": 3, "group_size": 16}),
    "awq": ("awq", {"bits": 4, "group_size": 128}),
    "rtn": ("rtn", {"bits": 4, "group_size": 128}),
}
LLAMA_32_1B: dict[str, Any] = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
               "rope_theta": 500000.0, "tie_word_embeddings": True, "max_position_embeddings": 131072}
TINY: dict[str, Any] = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "tie_word_embeddings": True}
LLMCOMPRESSOR_METHODS = ("gptq", "sparsegpt", "wanda", "awq", "rtn")  # SpQR has no llm-compressor modifier
SHAPES = {"llama-3.2-1b": LLAMA_32_1B, "tiny": TINY}
SEED = 0


@dataclass(frozen=True)
class Setup:
    device: str
    model: str  # a name of SHAPES
    layers: int
    n_samples: int
    seq_len: int
    batch_size: int
    error_samples: int  # calibration samples on which the first layer's reconstruction error is measured
    peak_matmul: int  # n of the n x n x n matmul that measures the peak

    @classmethod
    def for_device(cls, cpu: bool, **overrides) -> Setup:
        """The issue's setup on the GPU, the dry run's on the CPU; `overrides` (None: the default) change
        model (the shapes), layers, n_samples or seq_len."""
        model = overrides.get("model") or ("tiny" if cpu else "llama-3.2-1b")
        base = (cls("cpu", model, SHAPES[model]["num_hidden_layers"], n_samples=8, seq_len=64, batch_size=4,
                    error_samples=2, peak_matmul=1024) if cpu
                else cls("cuda", model, SHAPES[model]["num_hidden_layers"], n_samples=128, seq_len=2048,
                         batch_size=8, error_samples=4, peak_matmul=8192))
        return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def shapes(self) -> dict:
        return {**SHAPES[self.model], "num_hidden_layers": self.layers}

    @property
    def forward_dtype(self):
        import torch

        from calib_assets.compute import resolve_forward_dtype

        return torch.bfloat16 if self.device == "cuda" else resolve_forward_dtype("auto", "cpu")


# ---- the model, the tokens, timing -----------------------------------------------------------------------


def build_model(setup: Setup):
    """The random Llama, initialized on the device (fast on a GPU, and the same weights in every process
    that builds it there), then held on the host in bf16 like a loaded checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    with torch.device(setup.device):
        model = LlamaForCausalLM(LlamaConfig(**setup.shapes))
    # transformers decorates to() with functools.wraps(nn.Module.to), which hides the bound self from mypy
    return model.to(device="cpu", dtype=torch.bfloat16).eval()  # type: ignore[call-arg]


def calibration_ids(setup: Setup):
    import torch

    generator = torch.Generator().manual_seed(SEED)
    return torch.randint(0, setup.shapes["vocab_size"], (setup.n_samples, setup.seq_len), generator=generator)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def timed(device: str, record: dict, key: str = "wall_s"):
    """Seconds of the block into record[key]; on a GPU, with the device's queue drained at both ends and
    the peak allocation since the start into record["peak_gpu_mb"]."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    started = time.perf_counter()
    yield record
    synchronize(device)
    record[key] = time.perf_counter() - started
    if device == "cuda":
        record["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20


@contextlib.contextmanager
def counting_layer_tokens(model):
    """Counts the tokens that go through decoder layers while the block runs: the method's forward passes
    (calls may hold batches of different sizes)."""
    calls = {"tokens": 0}

    def count(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        calls["tokens"] += hidden.shape[0] * hidden.shape[1]

    handles = [layer.register_forward_pre_hook(count, with_kwargs=True) for layer in model.model.layers]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def release_gpu_cache(setup: Setup) -> None:
    """Cached blocks back to the driver between runs, so that each run's peak is its own."""
    import torch

    if setup.device == "cuda":
        torch.cuda.empty_cache()


def layer_passes(tokens: int, dense_pass_tokens: int, calibration_tokens: int) -> float:
    """Tokens through decoder layers, in units of one layer-wise pass of the dense model. Each pass, that
    one included, starts by capturing the first layer's inputs, a call of that layer stopped as it begins
    (counted by the pre-hook): subtracted from both sides. A call stopped early counts whole (Wanda's
    statistics pass stops before down_proj)."""
    if tokens == 0:
        return 0.0
    return (tokens - calibration_tokens) / (dense_pass_tokens - calibration_tokens)


def linear_flops(setup: Setup) -> float:
    """FLOPs of the decoder's linears in one layer-wise pass over the calibration set: 2 per weight per token."""
    s = setup.shapes
    q_and_o, k_and_v = 2 * s["num_attention_heads"] * s["head_dim"], 2 * s["num_key_value_heads"] * s["head_dim"]
    weights = s["hidden_size"] * (q_and_o + k_and_v + 3 * s["intermediate_size"])
    return 2 * weights * setup.n_samples * setup.seq_len * s["num_hidden_layers"]


def attention_flops(setup: Setup) -> float:
    """FLOPs of causal attention in that pass: QK^T and AV, 2 x 2 x seq x head_dim per head per token, halved
    because a token attends to the tokens before it only."""
    s = setup.shapes
    per_token = 2 * 2 * setup.seq_len * s["num_attention_heads"] * s["head_dim"] / 2
    return per_token * setup.n_samples * setup.seq_len * s["num_hidden_layers"]


def matmul_peak_tflops(setup: Setup, repeats: int = 10) -> float:
    """The device's matmul rate in the forward dtype: an n x n x n product after three warm-ups."""
    import torch

    n = setup.peak_matmul
    a = torch.randn(n, n, device=setup.device, dtype=setup.forward_dtype)
    b = torch.randn(n, n, device=setup.device, dtype=setup.forward_dtype)
    for _ in range(3):
        a @ b
    record: dict = {}
    with timed(setup.device, record):
        for _ in range(repeats):
            a @ b
    return 2 * n**3 * repeats / record["wall_s"] / 1e12


# ---- the first layer's reconstruction error --------------------------------------------------------------


class FirstLayerProbe:
    """The dense first decoder layer's output on a few calibration samples, kept to score a compressed
    layer against: ||out' - out|| / ||out - x||, the error relative to what the layer adds to its input
    (the residual stream would otherwise make every error look small). fp32, on the device."""

    def __init__(self, model, ids, setup: Setup):
        import torch

        self.setup = setup
        self.dense_layer = copy.deepcopy(model.model.layers[0]).float()
        with torch.no_grad():
            self.inputs = model.model.embed_tokens(ids[: setup.error_samples].to("cpu")).float()
            positions = torch.arange(ids.shape[1])[None]
            self.rotary = copy.deepcopy(model.model.rotary_emb).float()
            self.position_embeddings = self.rotary(self.inputs, positions)
        self.mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        self.dense_output = self._run(self.dense_layer)

    def _run(self, layer):
        import torch

        device = self.setup.device
        layer = layer.to(device)
        with torch.no_grad():
            out = layer(self.inputs.to(device), attention_mask=self.mask.to(device),
                        position_embeddings=tuple(t.to(device) for t in self.position_embeddings))
        out = out[0] if isinstance(out, tuple) else out
        layer.to("cpu")
        return out.to("cpu")

    def error(self, state: dict) -> float:
        """The error of a compressed first layer, given as its state dict: copied into a plain fp32 copy of
        the dense layer (llm-compressor's layers carry quantization parameters beside their weights)."""
        import torch

        layer = copy.deepcopy(self.dense_layer)
        with torch.no_grad():
            for name, param in layer.named_parameters():
                param.copy_(state[name].to(device="cpu", dtype=torch.float32))
        out = self._run(layer)
        return float(torch.linalg.norm(out - self.dense_output) / torch.linalg.norm(self.dense_output - self.inputs))


# ---- parts 2 and 4: ours ---------------------------------------------------------------------------------


def measure_forward(model, ids, setup: Setup) -> dict:
    """One layer-wise pass of the dense model through the engine, after a warm-up on one batch."""
    from calib_assets.compression import layerwise_hidden_states

    kwargs = {"device": setup.device, "forward_dtype": setup.forward_dtype, "batch_size": setup.batch_size}
    layerwise_hidden_states(model, ids[: setup.batch_size], **kwargs)
    record: dict = {"tokens": ids.numel()}
    with counting_layer_tokens(model) as calls, timed(setup.device, record):
        layerwise_hidden_states(model, ids, **kwargs)
    record["layer_tokens"] = calls["tokens"]
    record["tokens_per_s"] = ids.numel() / record["wall_s"]
    record["tflops"] = (linear_flops(setup) + attention_flops(setup)) / record["wall_s"] / 1e12
    record["peak_tflops"] = matmul_peak_tflops(setup)
    record["share_of_peak"] = record["tflops"] / record["peak_tflops"]
    return record


def run_ours(name: str, model, dense_state: dict, ids, setup: Setup, forward: dict, probe: FirstLayerProbe) -> dict:
    from calib_assets.compression import compress_model, make_method_config

    method, params = METHODS[name]
    config = make_method_config(method, params)
    model.load_state_dict(dense_state)
    record: dict = {"tool": "ours", "method": name, "config": config.label()}
    with counting_layer_tokens(model) as calls, timed(setup.device, record):
        results = compress_model(model, ids if config.needs_calibration else None, config, device=setup.device,
                                 forward_dtype=setup.forward_dtype, batch_size=setup.batch_size)
    record["passes"] = layer_passes(calls["tokens"], forward["layer_tokens"], ids.numel())
    record["forward_s"] = record["passes"] * forward["wall_s"]
    record["math_s"] = max(record["wall_s"] - record["forward_s"], 0.0)
    record["forward_share"] = record["forward_s"] / record["wall_s"]
    record["layer0_error"] = probe.error(model.model.layers[0].state_dict())
    record["linears"] = len(results)
    del results
    release_gpu_cache(setup)
    return record


# ---- part 3: llm-compressor, in a child process ----------------------------------------------------------


def llmcompressor_child(setup: Setup, methods: list[str], out: Path) -> None:
    """Each method with llm-compressor's oneshot on the same model and tokens; a RESULT line per method."""
    from llmcompressor import oneshot

    from calib_assets.models import byte_level_tokenizer
    from llmcompressor_run import build_recipe, calibration_dataset, cpu_workaround

    cpu_workaround()  # a no-op where there is an accelerator
    ids = calibration_ids(setup)
    probe = FirstLayerProbe(build_model(setup), ids, setup)
    dataset = calibration_dataset(ids)
    tokenizer = byte_level_tokenizer()
    config_folder = out / "llmcompressor-model"  # oneshot re-reads the model's config from its name_or_path
    build_model(setup).config.save_pretrained(config_folder)
    for name in methods:
        method, params = METHODS[name]
        record: dict[str, Any] = {"tool": "llmcompressor", "method": name}
        model = build_model(setup)  # the parent's dense weights: same seed, same device; oneshot leaves
        model.name_or_path = model.config._name_or_path = str(config_folder)  # quantization wrappers and
        try:  # offloading hooks behind, so every method starts from a new model
            recipe = build_recipe(method, params.get("bits", 4), params.get("group_size", 128))
            with timed(setup.device, record):
                oneshot(model=model, processor=tokenizer, recipe=recipe, dataset=dataset, pipeline="sequential",
                        num_calibration_samples=len(dataset), shuffle_calibration_samples=False,
                        max_seq_length=setup.seq_len, batch_size=setup.batch_size)
            record["layer0_error"] = probe.error(fake_quantized_state(model.model.layers[0]))
        except Exception as error:  # recorded, and the next method runs
            record["error"] = f"{type(error).__name__}: {error}"
        del model
        print("RESULT " + json.dumps(record), flush=True)
        release_gpu_cache(setup)


def fake_quantized_state(layer) -> dict:
    """A layer's state after llm-compressor: where a linear carries a weight quantization scheme, its
    weight as its forward pass sees it (GPTQ's weights are already on the grid, the plain quantization
    modifier's are quantized on the fly)."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    state = dict(layer.state_dict())
    with torch.no_grad():
        for name, module in layer.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is not None and scheme.weights is not None:
                state[f"{name}.weight"] = forward_quantize(module, module.weight, "weight", scheme.weights)
    return state


def run_llmcompressor(setup: Setup, methods: list[str], out: Path, seconds_left: float) -> list[dict]:
    """The child's records; where llm-compressor cannot be imported or the budget ran out first, one record
    per method that says so."""
    missing = [{"tool": "llmcompressor", "method": name, "skipped": "llm-compressor has no such method"}
               for name in methods if name not in LLMCOMPRESSOR_METHODS]
    methods = [name for name in methods if name in LLMCOMPRESSOR_METHODS]
    probe = subprocess.run([sys.executable, "-c", "import llmcompressor"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = "llm-compressor is not importable: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
        return missing + [{"tool": "llmcompressor", "method": name, "skipped": reason} for name in methods]
    if not methods:
        return missing
    log = out / "llmcompressor.log"
    command = [sys.executable, __file__, "--llmcompressor-child", ",".join(methods), "--out", str(out),
               "--shapes", setup.model, "--layers", str(setup.layers), "--samples", str(setup.n_samples),
               "--seq-len", str(setup.seq_len)] + (["--cpu"] if setup.device == "cpu" else [])
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            child.wait(timeout=max(seconds_left, 1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    records = [json.loads(line[7:]) for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    done = {r["method"] for r in records}
    why = "the budget ran out" if child.returncode != 0 and child.returncode < 0 else f"exit {child.returncode}"
    return missing + records + [{"tool": "llmcompressor", "method": name,
                                 "skipped": f"not finished ({why}; see {log.name})"}
                                for name in methods if name not in done]


# ---- part 1: the CUDA tests ------------------------------------------------------------------------------


def run_cuda_tests(setup: Setup, out: Path) -> dict:
    report = out / "cuda_tests.xml"
    env = {**os.environ, "CALIB_ASSETS_CUDA_TEST_DEVICE": setup.device}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
               str(REPO / "calib_assets_tests" / "test_cuda.py"), f"--junitxml={report}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    (out / "cuda_tests.log").write_text(result.stdout + result.stderr)
    record: dict[str, Any] = {"exit_code": result.returncode, "wall_s": time.perf_counter() - started}
    if report.exists():
        root = ET.parse(report).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        assert suite is not None, f"{report} holds no testsuite"
        record.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
        record["failed"] = [case.get("name") for case in suite.iter("testcase")
                            if case.find("failure") is not None or case.find("error") is not None]
    return record


# ---- the whole check -------------------------------------------------------------------------------------


def environment(setup: Setup) -> dict:
    import torch
    import transformers

    facts = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "device": setup.device, "forward_dtype": str(setup.forward_dtype).removeprefix("torch."),
             "shapes": setup.shapes, "calibration": [setup.n_samples, setup.seq_len], "batch_size": setup.batch_size}
    if setup.device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
        facts["cuda"] = torch.version.cuda
    return facts


def check(setup: Setup, methods: list[str], out: Path, budget_s: float, with_llmcompressor: bool) -> dict:
    started = time.perf_counter()
    results: dict = {"setup": asdict(setup), "environment": environment(setup)}
    results["cuda_tests"] = run_cuda_tests(setup, out)
    print(f"CUDA tests: {summarize_tests(results['cuda_tests'])}", flush=True)

    model = build_model(setup)
    ids = calibration_ids(setup)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    probe = FirstLayerProbe(model, ids, setup)
    results["forward"] = forward = measure_forward(model, ids, setup)
    print(f"forward: {forward['tokens_per_s']:,.0f} tokens/s, {forward['share_of_peak']:.0%} of the "
          f"{forward['peak_tflops']:.0f} TFLOP/s matmul peak", flush=True)

    results["runs"] = []
    for name in methods:
        if time.perf_counter() - started > budget_s:
            results["runs"].append({"tool": "ours", "method": name, "skipped": "the budget ran out"})
            continue
        try:
            record = run_ours(name, model, dense_state, ids, setup, forward, probe)
        except Exception as error:  # recorded; the other methods still run
            record = {"tool": "ours", "method": name, "error": f"{type(error).__name__}: {error}"}
        results["runs"].append(record)
        print(f"ours {name}: {record.get('wall_s', float('nan')):.1f} s {record.get('error', '')}", flush=True)
    del model, dense_state

    if with_llmcompressor:
        seconds_left = budget_s - (time.perf_counter() - started)
        results["runs"] += run_llmcompressor(setup, methods, out, seconds_left)
        theirs = [r for r in results["runs"] if r["tool"] == "llmcompressor"]
        print("llm-compressor: " + ", ".join(f"{r['method']} {cell(r, 'wall_s', '.1f')} s" for r in theirs), flush=True)
    results["wall_s"] = time.perf_counter() - started
    return results


def summarize_tests(record: dict) -> str:
    if "tests" not in record:
        return f"pytest exited {record['exit_code']} without a report (see cuda_tests.log)"
    passed = record["tests"] - record["failures"] - record["errors"] - record["skipped"]
    text = f"{passed} passed, {record['failures'] + record['errors']} failed, {record['skipped']} skipped"
    return text + (f" ({', '.join(record['failed'])})" if record["failed"] else "")


def render(results: dict) -> str:
    env, forward = results["environment"], results["forward"]
    lines = [f"# GPU check: {env.get('gpu', 'CPU dry run')}, torch {env['torch']}, transformers {env['transformers']}",
             "", f"Model: random Llama {env['shapes']['hidden_size']}-wide x "
             f"{env['shapes']['num_hidden_layers']} layers; "
             f"calibration {env['calibration'][0]} x {env['calibration'][1]} tokens; {env['forward_dtype']} forward "
             f"passes, batches of {env['batch_size']}. Whole check: {results['wall_s']:.0f} s.", "",
             f"CUDA tests: {summarize_tests(results['cuda_tests'])}.", "",
             f"Forward (one layer-wise pass of the dense model): {forward['wall_s']:.2f} s, "
             f"{forward['tokens_per_s']:,.0f} tokens/s, {forward['tflops']:.1f} TFLOP/s = "
             f"{forward['share_of_peak']:.0%} of the {forward['peak_tflops']:.0f} TFLOP/s matmul peak.", "",
             "| method | ours s | passes | forward share | peak GPU MB | layer-0 error | llm-compressor s | "
             "its peak GPU MB | its layer-0 error | time ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    runs = {(r["tool"], r["method"]): r for r in results["runs"]}
    for name in dict.fromkeys(r["method"] for r in results["runs"]):
        ours, theirs = runs.get(("ours", name), {}), runs.get(("llmcompressor", name), {})
        ratio = ours["wall_s"] / theirs["wall_s"] if "wall_s" in ours and "wall_s" in theirs else None
        lines.append("| " + " | ".join([
            name, cell(ours, "wall_s", ".1f"), cell(ours, "passes", ".2f"), cell(ours, "forward_share", ".0%"),
            cell(ours, "peak_gpu_mb", ",.0f"), cell(ours, "layer0_error", ".4f"), cell(theirs, "wall_s", ".1f"),
            cell(theirs, "peak_gpu_mb", ",.0f"), cell(theirs, "layer0_error", ".4f"),
            "" if ratio is None else f"{ratio:.2f}x"]) + " |")
    notes = [f"- {r['tool']} {r['method']}: {r.get('error') or r.get('skipped')}"
             for r in results["runs"] if "error" in r or "skipped" in r]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def cell(record: dict, key: str, spec: str) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def parse_methods(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"methods {unknown or text!r} not allowed; allowed: {list(METHODS)}")
    return names


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; a positive whole number is")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the results (created)")
    parser.add_argument("--cpu", action="store_true", help="dry run: a tiny model on the CPU")
    parser.add_argument("--methods", type=parse_methods, default=list(METHODS), help=",".join(METHODS))
    parser.add_argument("--no-llmcompressor", action="store_true", help="skip part 3")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="seconds after which no further run starts and llm-compressor's child is stopped")
    parser.add_argument("--shapes", choices=sorted(SHAPES), help="the model's shapes (default: llama-3.2-1b on "
                        "the GPU, tiny with --cpu)")
    parser.add_argument("--layers", type=positive, help="decoder layers (default: the shapes')")
    parser.add_argument("--samples", type=positive, help="calibration sequences (default: 128; 8 with --cpu)")
    parser.add_argument("--seq-len", type=positive, help="their length in tokens (default: 2048; 64 with --cpu)")
    parser.add_argument("--llmcompressor-child", type=parse_methods, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    setup = Setup.for_device(args.cpu, model=args.shapes, layers=args.layers, n_samples=args.samples,
                             seq_len=args.seq_len)
    if setup.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("torch sees no CUDA device: run on the GPU machine, or pass --cpu for the dry run")
    if args.llmcompressor_child:
        llmcompressor_child(setup, args.llmcompressor_child, args.out)
        return 0
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    results = check(setup, args.methods, args.out, args.budget_s, not args.no_llmcompressor)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    tests = results["cuda_tests"]
    return 0 if tests.get("tests") and not tests["failed"] and tests["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
