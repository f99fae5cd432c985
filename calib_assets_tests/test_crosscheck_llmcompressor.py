"""Cross-check of our compressors against llm-compressor (vllm-project/llm-compressor 0.14) on the embedded
SmolLM2-135M with one calibration set (16 x 256 tokens of bbc-tech, set 0; 4,096 held-out tokens).

llm-compressor lives in the optional `.venv-llmc` (`make bench-env`; CI does not build it) and runs in a
subprocess through `benchmarks/llmcompressor_run.py`; ours runs here, in float32 forward.

(a) Wanda 2:4: every decoder linear's mask from llm-compressor equals ours, through the whole sequential
    pass, up to floating-point near-ties. Settings and what had to be matched:
    - llm-compressor's sequential pipeline forces EAGER attention (`use_eager_attention`); our engine
      uses the model's (sdpa). Run as is, the layer outputs differ in the last bits from layer 0 on, so
      here our model is switched to eager attention: the inputs of every layer are then bit-identical
      until the masks first differ.
    - Weights that were exactly 0 before pruning are left out of the comparison: llm-compressor's mask
      is read back as `weight != 0`, and whether a zero weight counts as pruned or kept changes nothing.
    - What cannot be matched: both tools compute the same statistic, ours as mean(x^2), llm-compressor's
      as ||x||_2^2 / n_samples; the two round differently (~1e-7 relative). Where two scores of a 4-group
      are that close, the tools may keep different weights. So: every layer must match exactly until the
      first layer with a difference; every difference in that layer must be such a near-tie (relative
      gap < 1e-5 between the n-th and (n+1)-th smallest of OUR scores); from then on the two runs
      calibrate later layers on (slightly) different inputs and differences compound, so later layers
      must only agree on >= 95% of their weights. (On this set the first near-tie falls in layer 2.)
(b) GPTQ (3 bits, groups of 64, asymmetric, no act-order, damping 0.01) and SparseGPT (2:4, damping
    0.01). llm-compressor fixes each group's grid on the original weights before the GPTQ loop (static
    groups; its defaults, act-order "static" and symmetric, are overridden by the runner); ours does that
    with `static_groups=True` (our default refits the grid on the updated weights when a group starts,
    the GPTQ reference). Both methods are chaotic at float level (see the test), so layer 0, where both
    tools see bit-identical inputs, is compared weight by weight, and the perplexity against the band
    of our own float-level variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # torch is imported where it is used: collecting this file must stay cheap
    import torch

REPO = Path(__file__).resolve().parents[1]
LLMC_PYTHON = REPO / ".venv-llmc" / "bin" / "python"
RUNNER = REPO / "benchmarks" / "llmcompressor_run.py"
SAMPLES, SEQ_LEN, EVAL_TOKENS = 16, 256, 4096
NEAR_TIE = 1e-5  # relative gap between the n-th and (n+1)-th smallest score of a group
DOWNSTREAM_AGREEMENT = 0.95
PPL_TOLERANCE = 0.03

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not LLMC_PYTHON.exists() or os.environ.get("CALIB_ASSETS_CROSSCHECK") != "1",
        reason=f"optional (about 20 min on 2 CPU cores): build {LLMC_PYTHON} with `make bench-env`, then "
               "`make crosscheck` (CALIB_ASSETS_CROSSCHECK=1)",
    ),
]


@pytest.fixture(scope="module")
def fixed_set(tmp_path_factory):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _common import fixed_inputs
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return fixed_inputs("bbc-tech", SAMPLES, SEQ_LEN, EVAL_TOKENS, tmp_path_factory.mktemp("crosscheck"))


def run_llmcompressor(method: str, calibration: Path, heldout: Path, weights: Path | None = None) -> dict:
    argv = [str(LLMC_PYTHON), str(RUNNER), "--method", method, "--calibration", str(calibration),
            "--heldout", str(heldout), "--seq-len", str(SEQ_LEN), "--dtype", "float32", "--eval-dtype", "float32"]
    if weights is not None:
        argv += ["--save-weights", str(weights)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"llmcompressor_run.py {method} failed:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def load_ours():
    from calib_assets.models import load_model

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _common import embedded_model_folder
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    model, _ = load_model(embedded_model_folder())
    return model


def ours_perplexity(model, heldout: Path) -> float:
    import numpy as np

    from calib_assets.evaluation import perplexity

    model.set_attn_implementation("sdpa")  # scored like the runner scores llm-compressor's weights
    return perplexity(model, np.load(heldout).tolist(), seq_len=SEQ_LEN, batch_size=8).perplexity


def test_wanda_masks_match_llmcompressor(fixed_set, tmp_path, monkeypatch):
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from calib_assets.compression import WandaConfig, compress_model
    from calib_assets.compression import wanda as wanda_module

    calibration, heldout = fixed_set
    run_llmcompressor("wanda", calibration, heldout, weights=tmp_path / "weights.safetensors")
    theirs = {name: weight != 0 for name, weight in load_file(tmp_path / "weights.safetensors").items()}

    scores = []  # our Wanda score |W| sqrt(mean x^2) of each compress() call, in call order
    original_compress = wanda_module.Wanda.compress

    def recording_compress(self, weight):
        scores.append(weight.detach().float().abs() * self.sq_norm.to(weight.device).sqrt()[None, :])
        return original_compress(self, weight)

    monkeypatch.setattr(wanda_module.Wanda, "compress", recording_compress)
    model = load_ours()
    model.set_attn_implementation("eager")  # as llm-compressor's sequential pipeline does
    original = {name: m.weight.detach().clone() for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and name.startswith("model.layers.")}
    config = WandaConfig(n=2, m=4)
    ours = compress_model(model, torch.from_numpy(np.load(calibration)), config,
                          forward_dtype=torch.float32, batch_size=8)
    assert set(ours) == set(theirs) == set(original)

    # The engine compresses linears that share an input as one row-stacked matrix and inserts the results
    # in call order: split the recorded scores back per linear.
    score_of, names = {}, iter(ours)
    for stacked in scores:
        row = 0
        while row < stacked.shape[0]:
            name = next(names)
            rows = ours[name].packed_mask.unpack().shape[0]
            score_of[name] = stacked[row : row + rows]
            row += rows
    assert set(score_of) == set(ours)

    def layer_of(name: str) -> int:
        return int(name.split(".")[2])

    first_divergent, report = None, []
    for layer in sorted({layer_of(n) for n in ours}):
        for name in [n for n in ours if layer_of(n) == layer]:
            relevant = original[name] != 0
            differ = (ours[name].packed_mask.unpack() != theirs[name]) & relevant
            count = int(differ.sum())
            if first_divergent is None or first_divergent == layer:
                for row, col in differ.nonzero().tolist():
                    start = col - col % config.m
                    group = torch.sort(score_of[name][row, start : start + config.m]).values
                    gap = float((group[config.n] - group[config.n - 1]) / group[config.n])
                    window = slice(start, start + config.m)
                    assert gap < NEAR_TIE, (
                        f"{name}[{row}, {col}]: masks differ where the inputs are identical and the scores "
                        f"are not a near-tie (relative gap {gap:.3g}): "
                        f"ours {ours[name].packed_mask.unpack()[row, window].tolist()}, "
                        f"llm-compressor {theirs[name][row, window].tolist()}, scores {group.tolist()}"
                    )
                if count:
                    first_divergent = layer
                    report.append(f"{name}: {count} near-tie difference(s)")
            else:
                agreement = 1 - count / int(relevant.sum())
                assert agreement >= DOWNSTREAM_AGREEMENT, (
                    f"{name}: masks agree on only {agreement:.2%} of the weights after the first near-tie "
                    f"(layer {first_divergent})"
                )
    print(f"\nwanda 2:4 masks: identical up to layer {first_divergent if first_divergent is not None else 'none'}"
          + (f"; first differences, all float near-ties: {report}" if report else " (all layers identical)"))


def compress_ours(method: str, params: dict, calibration: Path, *, attention: str = "eager", batch_size: int = 8):
    """Our compressed model and its results; calibrated with llm-compressor's eager attention by default."""
    import numpy as np
    import torch

    from calib_assets.compression import compress_model, make_method_config

    model = load_ours()
    model.set_attn_implementation(attention)
    results = compress_model(model, torch.from_numpy(np.load(calibration)), make_method_config(method, params),
                             forward_dtype=torch.float32, batch_size=batch_size)
    return model, results


PARAMS = {
    "gptq": {"bits": 3, "group_size": 64, "symmetric": False, "act_order": False, "static_groups": True,
             "percdamp": 0.01, "blocksize": 128},
    "sparsegpt": {"n": 2, "m": 4, "percdamp": 0.01, "blocksize": 128},
}
FIRST_LAYER_AGREEMENT = 0.995  # measured: GPTQ 99.91% (o_proj) to 100%, SparseGPT 99.99% to 100%
FIRST_LAYER_ERROR_TOLERANCE = 0.01  # measured: GPTQ within 0.11%, SparseGPT within 0.01%
# Float-level variants of our own run: the same algorithm on the same data, only summation orders and
# attention kernels differ (batch size, sdpa vs eager).
FLOAT_VARIANTS = [("eager", 8), ("eager", 4), ("sdpa", 8)]


def same_decision(method: str, ours, theirs: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Where both tools decided a weight alike: GPTQ, the same grid level; SparseGPT, the same keep/prune
    (weights that were 0 before pruning count as agreeing: whether such a weight is kept changes nothing)."""
    if method == "gptq":
        step = ours.scales.repeat_interleave(PARAMS["gptq"]["group_size"], dim=1)
        return (ours.weight - theirs).abs() < 0.5 * step
    return (ours.packed_mask.unpack() == (theirs != 0)) | (original == 0)


@pytest.mark.parametrize("method", ["gptq", "sparsegpt"])
def test_matches_llmcompressor(method, fixed_set, tmp_path):
    """GPTQ's 3-bit rounding and SparseGPT's 2:4 choices are chaotic: a float-level change flips a few
    decisions, each flip feeds a different error to the rest of its row, and the differences compound
    through 30 layers. On this set our own perplexity moved between batch sizes 4 and 8 and the two
    attention kernels from 66.8 to 74.7 (GPTQ, an earlier build) and from 96.2 to 102.1 (SparseGPT), so
    one run against one run cannot be held to 3%. Checked instead:

    1. Layer 0, whose inputs are bit-identical in both tools: at least 99.5% of the weights decided alike
       (`same_decision`), and both reach the same layer-wise output error within 1%.
    2. Perplexity: llm-compressor's lies within our float-variant band, widened by 3% on each side.
    """
    from safetensors.torch import load_file

    calibration, heldout = fixed_set
    theirs = run_llmcompressor(method, calibration, heldout, weights=tmp_path / "weights.safetensors")
    their_weights = load_file(tmp_path / "weights.safetensors")

    band = []
    for attention, batch_size in FLOAT_VARIANTS:
        model, results = compress_ours(method, PARAMS[method], calibration, attention=attention, batch_size=batch_size)
        band.append(ours_perplexity(model, heldout))
        if len(band) == 1:
            first_layer = {name: r for name, r in results.items() if name.startswith("model.layers.0.")}
        del model, results

    original = {name: m.weight.detach().float() for name, m in load_ours().named_modules() if name in first_layer}
    inputs = first_layer_inputs(calibration)
    for name, result in first_layer.items():
        agreement = float(same_decision(method, result, their_weights[name], original[name]).float().mean())
        x = inputs[name]
        ours_error = float(((result.weight - original[name]) @ x.T).square().sum())
        their_error = float(((their_weights[name] - original[name]) @ x.T).square().sum())
        print(f"{name}: {agreement:.4%} decided alike; output error ours {ours_error:.4g}, theirs {their_error:.4g}")
        assert agreement >= FIRST_LAYER_AGREEMENT, (
            f"{name}: only {agreement:.2%} of the weights decided as llm-compressor did on identical inputs")
        assert abs(their_error / ours_error - 1) <= FIRST_LAYER_ERROR_TOLERANCE, (
            f"{name}: layer-wise output error ours {ours_error:.4g} vs llm-compressor {their_error:.4g}")

    low, high = min(band), max(band)
    print(f"{method}: perplexity ours {[round(p, 2) for p in band]}, llm-compressor {theirs['perplexity']:.2f}")
    assert low * (1 - PPL_TOLERANCE) <= theirs["perplexity"] <= high * (1 + PPL_TOLERANCE), (
        f"{method}: llm-compressor perplexity {theirs['perplexity']:.3f} is outside our float-variant band "
        f"[{low:.3f}, {high:.3f}] widened by {PPL_TOLERANCE:.0%}")


def first_layer_inputs(calibration: Path) -> dict:
    """Each layer-0 linear's calibration inputs [tokens, in_features], from the dense model."""
    import numpy as np
    import torch

    model = load_ours()
    model.set_attn_implementation("eager")
    captured: dict = {}
    hooks = [module.register_forward_pre_hook(
                 lambda m, args, name=name: captured.setdefault(name, []).append(
                     args[0].reshape(-1, args[0].shape[-1])))
             for name, module in model.named_modules() if name.startswith("model.layers.0.") and
             isinstance(module, torch.nn.Linear)]
    ids = torch.from_numpy(np.load(calibration))
    with torch.no_grad():
        for start in range(0, ids.shape[0], 8):
            model.model(input_ids=ids[start:start + 8], use_cache=False)
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}
