"""Shared set-up for the benchmarks: the embedded model, a fixed calibration set and held-out text."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

from calib_assets.artifacts import STUDY_FILE, artifact_root, check_root_study
from calib_assets.calibration import sample_windows, tokenize_documents
from calib_assets.evaluation import heldout_token_stream
from calib_assets.models import load_model, parse_model_spec, prepare_model_folder
from calib_assets.sources import build_corpus, parse_source_spec


def embedded_model_folder() -> Path:
    return prepare_model_folder(parse_model_spec("smollm2-135m"), artifact_root() / "model-cache")


def scratch_copy_of_root(root: Path, study: str, into: Path, *left_out: str) -> Path:
    """`into`/root: a copy of the artifact root of `study` (one with its upstream stages materialized)
    without the top-level folders `left_out`, so that a benchmark writes nothing under `root`."""
    if not (Path(root) / STUDY_FILE).is_file():
        raise SystemExit(f"{root} is not an artifact root (no {STUDY_FILE}); materialize the study's upstream "
                         "stages there first")
    check_root_study(root, study, claim=False)
    copy = Path(into) / "root"
    shutil.copytree(root, copy, ignore=lambda folder, names: [n for n in names if Path(folder) == Path(root)
                                                             and n in left_out])
    return copy


def fixed_inputs(source: str, n_samples: int, seq_len: int, eval_tokens: int, out: Path,
                 calibration_set: int = 0) -> tuple[Path, Path]:
    """Calibration ids (set `calibration_set` of `source`, as a study's seed) and the held-out token stream,
    saved as .npy files."""
    _, tokenizer = load_model(embedded_model_folder())
    corpus = build_corpus(parse_source_spec(source))
    pool = corpus[corpus["split"] == "calibration"]
    documents = tokenize_documents(dict(zip(pool["doc_id"], pool["text"])), tokenizer)
    windows = sample_windows(documents, seq_len=seq_len, n_samples=n_samples, seed=calibration_set,
                             source=source)
    heldout = corpus[corpus["split"] == "heldout"]["text"].tolist()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "calibration.npy", np.array([w.token_ids for w in windows], dtype=np.int64))
    np.save(out / "heldout.npy", np.array(heldout_token_stream(heldout, tokenizer, eval_tokens), dtype=np.int64))
    return out / "calibration.npy", out / "heldout.npy"


def library_baseline_mb(folder: Path) -> float:
    """Anonymous RSS (MB) with the interpreter, the libraries, the tokenizer and the model's modeling code
    loaded, but no model: a one-layer toy of the model's architecture is built and dropped first. Building
    that toy alone takes about 126 MB here (lazily imported modules, the libraries' first-use buffers)
    and the tokenizer 45 MB; neither grows with the model, so neither is charged to the compression."""
    import gc

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    toy = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128}
    AutoTokenizer.from_pretrained(folder)
    AutoModelForCausalLM.from_config(type(config)(**{**config.to_dict(), **toy}))
    gc.collect()
    return rss_mb()


def peak_rss_mb() -> float:
    """The process's lifetime peak RSS (model loading and evaluation included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Anonymous resident memory (MB): what the process allocated. File-backed pages, such as those of a
    memory-mapped safetensors file, are left out: they are a cache the kernel can drop."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


@contextlib.contextmanager
def sampled_peak_rss(interval_s: float = 0.005):
    """The peak anonymous RSS (MB) while the block runs, sampled every `interval_s` by a thread: the lifetime peak
    (ru_maxrss) would also count the model's loading. Yields a dict whose "peak_mb"/"start_mb" are set on exit."""
    record = {"start_mb": rss_mb(), "peak_mb": rss_mb()}
    done = threading.Event()

    def sample():
        while not done.wait(interval_s):
            record["peak_mb"] = max(record["peak_mb"], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        done.set()
        thread.join()
        record["peak_mb"] = max(record["peak_mb"], rss_mb())


def model_megabytes(model, bytes_per_param: int = 2) -> float:
    """The model's parameters at `bytes_per_param` (2: its bf16 size)."""
    return sum(p.numel() for p in model.parameters()) * bytes_per_param / 2**20


def emit(record: dict) -> None:
    sys.stdout.write("RESULT " + json.dumps(record) + "\n")
    sys.stdout.flush()
