"""Which compression settings put the default study's compressed SmolLM2-135M where the paper's 7B models
sat (mean held-out perplexity about 1.3-2.5x dense, task accuracy clearly above chance): each candidate is
compressed on one calibration set and evaluated as the study evaluates (held-out perplexity per source,
the offline tasks), beside the dense model.

    .venv/bin/python benchmarks/default_settings.py ROOT [--calib bbc-tech.s0]
        [--candidates gptq:bits=4,group_size=64 ...]

ROOT: an artifact root of the default study with its upstream stages materialized (see
benchmarks/profile_checkpoint.py); everything is written under a temporary copy of it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

CANDIDATES = [
    "gptq:bits=3,group_size=64", "gptq:bits=4,group_size=64", "gptq:bits=3,group_size=16",
    "spqr:bits=3,group_size=16",
    "sparsegpt:n=2,m=4", "sparsegpt:sparsity=0.5", "sparsegpt:n=4,m=8",
    "wanda:n=2,m=4", "wanda:sparsity=0.5", "wanda:n=4,m=8",
]


def parse_candidate(text: str) -> dict:
    method, _, options = text.partition(":")
    entry: dict[str, str | int | float] = {"method": method}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        entry[key] = float(value) if "." in value else int(value)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--calib", default="bbc-tech.s0")
    parser.add_argument("--candidates", nargs="*", default=CANDIDATES)
    args = parser.parse_args()

    from _common import scratch_copy_of_root
    from calib_assets.steps import evaluate_variant, forward_placement, materialize_checkpoint, read_evaluation
    from calib_assets.study import load_study

    with tempfile.TemporaryDirectory(prefix="settings-") as scratch:
        base = yaml.safe_load((REPO / "studies" / "default.yaml").read_text())
        base["methods"] = [parse_candidate(text) for text in args.candidates]
        study_path = Path(scratch) / "default.yaml"
        study_path.write_text(yaml.safe_dump(base))
        study = load_study(str(study_path))
        if args.calib not in study.calib_keys:
            raise SystemExit(f"--calib {args.calib!r} is not a calibration set of the default study; allowed: "
                             f"{study.calib_keys}")
        root = scratch_copy_of_root(args.root, study.name, Path(scratch), "checkpoints")
        device, dtype = forward_placement(study)
        dense_variant = study.baseline_keys[0]
        rows = [("dense", read_evaluation(root, dense_variant, None))]
        for variant in study.variant_keys:
            materialize_checkpoint(study, variant, args.calib, root, device=device, forward_dtype=dtype,
                                   log=lambda line: None)
            evaluate_variant(study, variant, args.calib, root, device=device, forward_dtype=dtype, run_id="settings")
            rows.append((variant.split(".", 1)[1], read_evaluation(root, variant, args.calib)))
            summarize(rows)


def summarize(rows) -> None:
    import pandas as pd

    table = []
    for label, results in rows:
        ppl = results[(results["metric"] == "perplexity") & results["eval_dataset"].str.endswith("-heldout")]
        acc = results[results["metric"] == "acc"].set_index("eval_dataset")["value"]
        accuracies = {f"{task} acc": acc[task] for task in acc.index}
        table.append({"variant": label, "mean_ppl": ppl["value"].mean(), **accuracies})
    frame = pd.DataFrame(table)
    frame.insert(2, "ppl_x_dense", frame["mean_ppl"] / frame["mean_ppl"].iloc[0])
    print(frame.round(3).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
