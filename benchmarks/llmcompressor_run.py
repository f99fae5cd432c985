"""One compression method with llm-compressor (vllm-project/llm-compressor) on the embedded model, scored
with OUR perplexity code; the counterpart of `compression.py --child METHOD`.

Runs in the optional .venv-llmc (`make bench-env`), never in the main venv:

    .venv-llmc/bin/python benchmarks/llmcompressor_run.py --method gptq \
        --calibration calibration.npy --heldout heldout.npy [--seq-len 512] [--save-weights weights.safetensors]

The calibration token ids (.npy, [n, seq_len]) go to `oneshot` as a `datasets.Dataset` of exactly those
rows (all-ones attention mask, no shuffling, no re-tokenization) through the sequential pipeline, one
decoder layer at a time, each layer calibrated on the outputs of the already-compressed layers before
it (`propagate_error`), as in our engine. Settings are set to match ours (`compression.py` METHODS),
overriding llm-compressor's defaults where they differ:

- gptq: 3 bits, groups of 64, asymmetric, no act-order (llm-compressor defaults to "static"
  act-order and symmetric), dampening 0.01, blocks of 128. Remaining difference: llm-compressor fixes
  every group's scale/zero from the ORIGINAL weights before the GPTQ loop (its observer runs first),
  while our default fits a group's grid on the error-updated weights when the group starts (the GPTQ
  reference); ours matches llm-compressor only with `static_groups=True`.
- sparsegpt: 2:4 (`mask_structure="2:4"`), dampening 0.01, blocks of 128, no joint quantization.
- wanda: 2:4. Its statistic is ||x_j||^2 / n_samples where ours is mean(x_j^2) over tokens: a constant
  factor per linear, which changes no mask except at float near-ties (the two round differently).
- awq: 3 bits, groups of 64, asymmetric, plain activation scaling s = mean|x|^a on a 20-point grid
  (`duo_scaling=False`, the reference AWQ), then round-to-nearest with llm-compressor's min/max observer.
  llm-compressor has no clipping search (ours clips by default). On CPU its AWQ needs `cpu_workaround`
  and is slow: on the 2 shared cores it had not finished 20 of 30 layers after 10 minutes with only
  8 x 128 calibration tokens (its grid search re-runs whole attention/MLP blocks per grid point).

During calibration llm-compressor forces eager attention; ours runs the model's sdpa in fp32 and, in bf16,
the same math as eager by blocks of queries (`compression/attention.py`). The two agree to float rounding,
not bit for bit. llm-compressor's forward runs in the model's dtype, so the model is
loaded in --dtype, resolved as compression.py resolves it (auto: bf16 where the CPU has it natively,
else fp32): both tools then calibrate in the same forward dtype, and llm-compressor's compressed weights
are held in it, as on a GPU.

lm_head is ignored everywhere (llm-compressor's "Linear" target would otherwise include it, and it is
tied to the embeddings). Only `oneshot` is timed. Perplexity: the compressed weights are copied into a
freshly loaded plain model (no compressed-tensors wrappers), cast to --eval-dtype and scored with
`calib_assets.evaluation.perplexity`, exactly as `compression.py` scores ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("gptq", "sparsegpt", "wanda", "awq", "rtn")
BITS, GROUP_SIZE = 3, 64  # compression.py METHODS["gptq"] / ["awq"]
PRUNE_N, PRUNE_M = 2, 4  # compression.py METHODS["sparsegpt"] / ["wanda"]
DAMPENING = 0.01
BLOCK_SIZE = 128
IGNORE = ["re:.*lm_head"]  # pruning modifiers name a linear "<layer>." (trailing dot): a plain "lm_head" misses it


def weight_scheme(bits: int = BITS, group_size: int = GROUP_SIZE):
    """Asymmetric integer groups, no act-order, min/max observer: our GPTQConfig/RTN grid."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group",
                               group_size=group_size, actorder=None, observer="memoryless_minmax")
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def build_recipe(method: str, bits: int = BITS, group_size: int = GROUP_SIZE):
    """llm-compressor's modifiers for `method`; `bits`/`group_size` apply to the quantizing ones (gptq, awq,
    rtn: round-to-nearest on the same grid, llm-compressor's QuantizationModifier alone)."""
    if method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(config_groups=weight_scheme(bits, group_size), ignore=IGNORE, actorder=None,
                             dampening_frac=DAMPENING, block_size=BLOCK_SIZE)]
    if method == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        return [SparseGPTModifier(sparsity=PRUNE_N / PRUNE_M, mask_structure=f"{PRUNE_N}:{PRUNE_M}",
                                  ignore=IGNORE, dampening_frac=DAMPENING, block_size=BLOCK_SIZE)]
    if method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return [WandaPruningModifier(sparsity=PRUNE_N / PRUNE_M, mask_structure=f"{PRUNE_N}:{PRUNE_M}",
                                     ignore=IGNORE)]
    from llmcompressor.modifiers.quantization import QuantizationModifier

    rtn = QuantizationModifier(config_groups=weight_scheme(bits, group_size), ignore=IGNORE)
    if method == "rtn":
        return [rtn]
    if method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(duo_scaling=False, n_grid=20), rtn]
    raise ValueError(f"unknown method {method!r}; allowed: {list(METHODS)}")


def cpu_workaround() -> None:
    """llm-compressor's AWQ pins its cached activations (`IntermediatesCache.pin_memory`) for faster
    host-to-device copies; on a machine without an accelerator pinning raises "Cannot access accelerator
    device when none is available". Pinning only speeds up transfers, so it is skipped there."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def calibration_dataset(ids):
    """Exactly the given rows, already tokenized: llm-compressor then skips its own tokenization."""
    from datasets import Dataset

    rows = ids.tolist()
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def decoder_linears(model) -> dict:
    import torch

    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("model.layers.")}


def copy_weights(compressed, fresh) -> None:
    """Every parameter of `fresh` that `compressed` holds under the same name (AWQ also rescales norms)."""
    import torch

    source = dict(compressed.named_parameters())
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            if name in source and source[name].shape == param.shape:
                param.copy_(source[name].detach().to(param.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--calibration", required=True, help=".npy of token ids [n, seq_len]")
    parser.add_argument("--heldout", required=True, help=".npy of the held-out token stream")
    parser.add_argument("--seq-len", type=int, default=512, help="perplexity window")
    parser.add_argument("--dtype", default="float32", choices=["auto", "bfloat16", "float32"],
                        help="the dtype the model is loaded in, hence llm-compressor's forward dtype during "
                             "calibration (auto: bf16 where the CPU runs it natively, else fp32)")
    parser.add_argument("--eval-dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=8, help="calibration batch size (ours: 8)")
    parser.add_argument("--save-weights", help="safetensors file: decoder linear name -> its compressed fp32 weight "
                                               "(a pruning method's mask is weight != 0)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from llmcompressor import oneshot

    from _common import embedded_model_folder, emit, library_baseline_mb, peak_rss_mb, sampled_peak_rss
    from calib_assets.compute import resolve_forward_dtype
    from calib_assets.evaluation import perplexity
    from calib_assets.models import load_model

    folder = embedded_model_folder()
    runtime_mb = library_baseline_mb(folder)
    ids = np.load(args.calibration)
    stream = np.load(args.heldout).tolist()
    model, tokenizer = load_model(folder, dtype=resolve_forward_dtype(args.dtype, "cpu"))
    dataset = calibration_dataset(ids)
    recipe = build_recipe(args.method)
    cpu_workaround()

    with sampled_peak_rss() as memory:
        started = time.perf_counter()
        oneshot(model=model, processor=tokenizer, recipe=recipe, dataset=dataset, pipeline="sequential",
                num_calibration_samples=len(dataset), shuffle_calibration_samples=False,
                max_seq_length=ids.shape[1], batch_size=args.batch_size)
        seconds = time.perf_counter() - started

    if args.save_weights:
        from safetensors.torch import save_file

        save_file({name: m.weight.detach().float().contiguous() for name, m in decoder_linears(model).items()},
                  args.save_weights)

    fresh, _ = load_model(folder, dtype=torch.float32)
    copy_weights(model, fresh)
    del model
    ppl = perplexity(fresh.to(getattr(torch, args.eval_dtype)), stream, seq_len=args.seq_len, batch_size=8)
    emit({"tool": "llmcompressor", "method": args.method, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
          "compress_peak_mb": memory["peak_mb"], "runtime_mb": runtime_mb,
          "perplexity": ppl.perplexity})


if __name__ == "__main__":
    main()
