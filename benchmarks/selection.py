"""Selection cost per strategy on 10,000 candidate documents (windows of embedded text).

    .venv/bin/python benchmarks/selection.py [--candidates 10000] [--select 128] [--seq-len 256]
                                             [--model-candidates 500]

Candidates are consecutive seq_len-token windows of every embedded corpus (BBC News, Wikipedia, ABC news),
cycled with a shifted start until there are enough. ZipCal and token coverage run on all of them. The
model-based strategies (least perplexity, activation k-means) run the embedded SmolLM2-135M forward over
every candidate; on CPU that would take far more than 5 minutes for 10,000, so they run on
--model-candidates and the script prints their per-candidate rate and the extrapolated 10,000 cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import embedded_model_folder, emit  # noqa: E402
from calib_assets.calibration.selection import (  # noqa: E402
    select_activation_kmeans,
    select_coverage,
    select_least_perplexity,
    select_zipcal,
)

CORPORA = ("bbc-business", "bbc-entertainment", "bbc-politics", "bbc-sport", "bbc-tech", "wikipedia", "abc-news")


def candidate_windows(tokenizer, n: int, seq_len: int) -> list[list[int]]:
    from calib_assets.sources import build_corpus

    documents = [ids for name in CORPORA
                 for ids in tokenizer(build_corpus(name)["text"].tolist(), add_special_tokens=False)["input_ids"]]
    windows: list[list[int]] = []
    shift = 0
    while len(windows) < n:
        for ids in documents:
            windows += [ids[i:i + seq_len] for i in range(shift, len(ids) - seq_len + 1, seq_len)]
        shift += seq_len // 3 + 1
    return windows[:n]


def timed(name: str, candidates: int, run) -> float:
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print(f"{name:>22}: {seconds:8.2f} s on {candidates:6d} candidates ({seconds / candidates * 1e3:7.3f} ms each)")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--select", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--model-candidates", type=int, default=500)
    args = parser.parse_args()

    import torch

    from calib_assets.calibration.scoring import row_embeddings, row_perplexities
    from calib_assets.compute import resolve_device, resolve_forward_dtype
    from calib_assets.models import load_model

    model, tokenizer = load_model(embedded_model_folder())
    device = resolve_device("auto")
    dtype = resolve_forward_dtype("auto", device)
    model = model.to(device=device, dtype=dtype)
    rows = candidate_windows(tokenizer, args.candidates, args.seq_len)
    print(f"{len(rows)} candidates of {args.seq_len} tokens; select {args.select}; model forward on {device} "
          f"in {dtype} (torch threads {torch.get_num_threads()})")
    results = {
        "zipcal": timed("zipcal", len(rows), lambda: select_zipcal(rows, args.select)),
        "coverage": timed("coverage", len(rows), lambda: select_coverage(rows, args.select)),
    }
    subset = rows[: args.model_candidates]
    n_select = min(args.select, len(subset))
    results["least_perplexity"] = timed("least_perplexity", len(subset), lambda: select_least_perplexity(
        row_perplexities(model, subset, batch_size=8, device=device), n_select))
    results["activation_kmeans"] = timed("activation_kmeans", len(subset), lambda: select_activation_kmeans(
        row_embeddings(model, subset, batch_size=8, device=device), n_select))
    for name in ("least_perplexity", "activation_kmeans"):
        extrapolated = results[name] / len(subset) * args.candidates
        print(f"{name:>22}: ~{extrapolated:8.0f} s extrapolated to {args.candidates} candidates (measured on "
              f"{len(subset)}: model forward dominates)")
        results[f"{name}_extrapolated"] = extrapolated
    speedup = results["least_perplexity_extrapolated"] / results["zipcal"]
    print(f"zipcal is ~{speedup:.0f}x faster than least-perplexity selection here")
    emit({"benchmark": "selection", "candidates": len(rows), "seq_len": args.seq_len, "select": args.select,
          "model_candidates": len(subset), "device": device, "seconds": results})


if __name__ == "__main__":
    main()
