"""Evaluation throughput on the embedded model, float32 against bfloat16: lm-eval requests per second and
tokens per second on the offline tasks (LAMBADA-style cloze, HellaSwag-style next sentence), and tokens
per second of held-out perplexity.

    .venv/bin/python benchmarks/evaluation.py [--examples 100] [--source bbc-tech] [--batch-size 8]

Each dtype runs in its own process. Tokens count every request's context + continuation, as the model
scores them (lm-eval feeds one sequence per request; padding is not counted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DTYPES = ("float32", "bfloat16")


def build_tasks(source: str, n_examples: int, out: Path) -> list[Path]:
    from calib_assets.evaluation import build_cloze_task, build_next_sentence_task, write_lm_eval_task
    from calib_assets.sources import build_corpus

    corpus = build_corpus(source)
    folders = []
    for name, builder in (("bench_cloze", build_cloze_task), ("bench_next_sentence", build_next_sentence_task)):
        write_lm_eval_task(builder(corpus, n_examples=n_examples, seed=0), out / name, name)
        folders.append(out / name)
    return folders


def request_tokens(folder: Path, tokenizer) -> tuple[int, int]:
    """(requests, tokens) of one written task: one request per cloze example, one per choice otherwise."""
    requests = tokens = 0
    for line in (folder / "test.jsonl").read_text().splitlines():
        example = json.loads(line)
        continuations = example["choices"] if "choices" in example else [example["target"]]
        for continuation in continuations:
            requests += 1
            tokens += len(tokenizer(example["context"] + " " + continuation, add_special_tokens=False)["input_ids"])
    return requests, tokens


def run_one(args) -> None:
    import torch

    from _common import embedded_model_folder, emit
    from calib_assets.evaluation import TaskSpec, evaluate_tasks_detailed, heldout_token_stream, perplexity
    from calib_assets.models import load_model
    from calib_assets.sources import build_corpus

    model, tokenizer = load_model(embedded_model_folder())
    model = model.to(getattr(torch, args.dtype)).eval()
    for folder in sorted(Path(args.tasks).iterdir()):
        requests, tokens = request_tokens(folder, tokenizer)
        started = time.perf_counter()
        result = evaluate_tasks_detailed(model, tokenizer, [TaskSpec(folder.name, include_path=str(folder))],
                                         batch_size=args.batch_size, bootstrap_iters=0)
        seconds = time.perf_counter() - started
        acc = next(row["value"] for row in result.rows if row["metric"] == "acc")
        emit({"dtype": args.dtype, "workload": folder.name, "requests": requests, "tokens": tokens,
              "seconds": seconds, "acc": acc})
    corpus = build_corpus(args.source)
    stream = heldout_token_stream(corpus[corpus["split"] == "heldout"]["text"].tolist(), tokenizer, args.ppl_tokens)
    started = time.perf_counter()
    ppl = perplexity(model, stream, seq_len=512, batch_size=args.batch_size)
    emit({"dtype": args.dtype, "workload": "perplexity", "requests": ppl.n_tokens // 511, "tokens": ppl.n_tokens,
          "seconds": time.perf_counter() - started, "acc": None, "ppl": ppl.perplexity})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="examples per offline task")
    parser.add_argument("--source", default="bbc-tech", help="embedded source whose held-out text is used")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.examples < 1 or args.batch_size < 1 or args.ppl_tokens < 512:
        parser.error("--examples and --batch-size must be >= 1, --ppl-tokens >= 512")
    if args.dtype:
        return run_one(args)
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        build_tasks(args.source, args.examples, Path(scratch))
        for dtype in DTYPES:
            command = [sys.executable, __file__, "--dtype", dtype, "--tasks", scratch, "--source", args.source,
                       "--batch-size", str(args.batch_size), "--ppl-tokens", str(args.ppl_tokens)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            records += [json.loads(line[7:]) for line in output.splitlines() if line.startswith("RESULT ")]
    print(f"{'dtype':<9} {'workload':<20} {'requests':>8} {'tokens':>8} {'seconds':>8} {'req/s':>7} {'tok/s':>7} "
          f"{'acc/ppl':>8}")
    for r in records:
        score = r["acc"] if r["acc"] is not None else r["ppl"]
        print(f"{r['dtype']:<9} {r['workload']:<20} {r['requests']:>8} {r['tokens']:>8} {r['seconds']:>8.1f} "
              f"{r['requests'] / r['seconds']:>7.1f} {r['tokens'] / r['seconds']:>7.0f} {score:>8.3f}")


if __name__ == "__main__":
    main()
