"""lm-eval adapter: zero-shot evaluation of an in-memory model on paper tasks and offline tasks.

- A paper task (e.g. `piqa`) given by name alone is passed through to lm-eval, which downloads its data
  (needs network or a filled Hugging Face cache).
- `TaskSpec(name, data_files=...)` evaluates an upstream task on local files in the task's own schema:
  a derived YAML `include:`s lm-eval's upstream YAML (prompt, choices, metrics, process_docs) and
  overrides only the dataset keys (`dataset_path: json`, `dataset_kwargs.data_files`, test split).
- `TaskSpec(name, include_path=...)` is a task folder written by `write_lm_eval_task` (offline tasks).

Forward passes run in whatever dtype the model already has (bf16 where supported is the project
default); log-softmax is taken in fp32.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAPER_TASKS = [
    "arc_easy",
    "arc_challenge",
    "boolq",
    "hellaswag",
    "lambada_openai",
    "openbookqa",
    "piqa",
    "rte",
    "storycloze_2016",
    "winogrande",
]

# Where lm-eval 0.4.x keeps the paper tasks' YAMLs (relative to lm_eval/tasks); other names are looked up
# in lm-eval's task index.
_UPSTREAM_YAML = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "piqa": "piqa/piqa.yaml",
    "rte": "glue/rte/default.yaml",
    "storycloze_2016": "storycloze/storycloze_2016.yaml",
    "winogrande": "winogrande/default.yaml",
}
LOCAL_SUFFIX = "__local"
CORRECTNESS_METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class TaskSpec:
    """One task to evaluate.

    name: the lm-eval task name (reported as `task` in the rows).
    data_files: a local JSON/JSONL file (or list of files) in the upstream task's schema; evaluated as
        the task's test split through a derived YAML that includes lm-eval's upstream YAML.
    include_path: a folder holding the task's YAML (as written by `write_lm_eval_task`).
    """

    name: str
    data_files: str | Path | tuple[str, ...] | list[str] | None = None  # a list is held as a tuple
    include_path: str | Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name {self.name!r} must be a non-empty string")
        if self.data_files is not None and self.include_path is not None:
            raise ValueError(f"task {self.name!r}: give data_files or include_path, not both")
        if isinstance(self.data_files, list):
            object.__setattr__(self, "data_files", tuple(self.data_files))


@dataclass
class HarnessResult:
    """rows: long format (task, metric, value, stderr, n_samples).
    correct: task -> metric (acc, acc_norm where the task has it) -> {doc index: correct}."""

    rows: list[dict[str, Any]]
    correct: dict[str, dict[str, dict[int, bool]]] = field(default_factory=dict)


def _as_spec(task: TaskSpec | str) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else TaskSpec(name=task)


def check_lm_eval_task_name(name: str) -> str:
    """`name` if the installed lm-eval has a task of that name (the paper's ten without indexing lm-eval's
    registry, which takes seconds); else ValueError with the paper's task names."""
    if name not in _UPSTREAM_YAML:
        upstream_yaml(name)
    return name


def upstream_yaml(name: str) -> Path:
    """Path of lm-eval's own YAML for a task name."""
    import lm_eval.tasks

    tasks_dir = Path(lm_eval.tasks.__file__).parent
    relative = _UPSTREAM_YAML.get(name)
    if relative and (tasks_dir / relative).is_file():
        return tasks_dir / relative
    from lm_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if path is None:
        raise ValueError(f"the installed lm-eval has no task named {name!r}; the paper's tasks: {PAPER_TASKS} "
                         "(any task of `lm_eval --tasks list` is allowed)")
    return Path(path)


def _data_file_list(spec: TaskSpec) -> list[str]:
    assert spec.data_files is not None  # called for tasks on local files only
    files = [spec.data_files] if isinstance(spec.data_files, (str, Path)) else list(spec.data_files)
    resolved = []
    for file in files:
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"task {spec.name!r}: data file {str(path)!r} does not exist")
        resolved.append(str(path))
    return resolved


def write_local_override(spec: TaskSpec, directory: Path) -> tuple[str, Path]:
    """Write `<name>__local.yaml` that includes the upstream YAML and reads `spec.data_files`.

    Returns (lm-eval task name, folder to include)."""
    import yaml

    upstream = upstream_yaml(spec.name)
    files = _data_file_list(spec)
    derived = {
        "include": str(upstream),
        "task": spec.name + LOCAL_SUFFIX,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": files if len(files) > 1 else files[0]}},
        "training_split": None,
        "validation_split": None,
        "fewshot_split": None,
        "test_split": "test",
    }
    folder = Path(directory) / (spec.name + LOCAL_SUFFIX)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{spec.name}{LOCAL_SUFFIX}.yaml").write_text(yaml.safe_dump(derived, sort_keys=False))
    return spec.name + LOCAL_SUFFIX, folder


def evaluate_tasks(model, tokenizer, task_specs: Sequence[TaskSpec | str], *, batch_size: int = 8,
                   limit: int | float | None = None, device: str = "cpu",
                   bootstrap_iters: int = 1000, work_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Long rows (task, metric, value, stderr, n_samples); see `evaluate_tasks_detailed`."""
    return evaluate_tasks_detailed(model, tokenizer, task_specs, batch_size=batch_size, limit=limit,
                                   device=device, bootstrap_iters=bootstrap_iters, work_dir=work_dir).rows


def evaluate_tasks_detailed(model, tokenizer, task_specs: Sequence[TaskSpec | str], *, batch_size: int = 8,
                            limit: int | float | None = None, device: str = "cpu",
                            bootstrap_iters: int = 1000, work_dir: Path | str | None = None) -> HarnessResult:
    """Zero-shot lm-eval `simple_evaluate` of an in-memory model (moved to `device`, dtype kept).

    Rows: one per task and metric (acc, acc_norm, perplexity ...), stderr None where lm-eval gives none.
    `correct` holds per-example correctness for acc / acc_norm (from lm-eval's logged samples) for
    answer-flip comparisons. Derived task YAMLs go to `work_dir` (a temporary folder when None).
    """
    specs = [_as_spec(task) for task in task_specs]
    if not specs:
        raise ValueError("no tasks to evaluate")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be an integer >= 1")
    for spec in specs:
        if spec.include_path is not None and not Path(spec.include_path).is_dir():
            raise ValueError(f"task {spec.name!r}: include_path {str(spec.include_path)!r} is not a folder")
        if spec.data_files is not None:
            _data_file_list(spec)
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="calib-lm-eval-") as tmp:
            return _evaluate(model, tokenizer, specs, batch_size, limit, device, bootstrap_iters, Path(tmp))
    return _evaluate(model, tokenizer, specs, batch_size, limit, device, bootstrap_iters, Path(work_dir))


def _bootstrap_in_process():
    """lm-eval's bootstrap stderr (perplexity-type metrics) forks a multiprocessing pool unless
    DISABLE_MULTIPROC is set; forked from a process that already runs torch's or Dagster's threads, its
    workers can deadlock on a lock held at fork time (seen as a hung test run). Run it in-process."""
    from unittest import mock

    return mock.patch.dict(os.environ, {"DISABLE_MULTIPROC": "1"})


def _evaluate(model, tokenizer, specs, batch_size, limit, device, bootstrap_iters, work_dir) -> HarnessResult:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from calib_assets.evaluation.loglikelihood import ContinuationOnlyLM

    lm_names: dict[str, str] = {}  # lm-eval task name -> reported name
    include_paths: list[str] = []
    for spec in specs:
        if spec.data_files is not None:
            lm_name, folder = write_local_override(spec, work_dir)
            include_paths.append(str(folder))
        else:
            lm_name = spec.name
            if spec.include_path is not None:
                include_paths.append(str(Path(spec.include_path).resolve()))
        lm_names[lm_name] = spec.name
    # lm-eval's own task index takes seconds to build: load it only for tasks passed through by name.
    needs_defaults = any(spec.data_files is None and spec.include_path is None for spec in specs)
    task_manager = TaskManager(include_path=include_paths or None, include_defaults=needs_defaults)
    unknown = [name for name in lm_names if name not in task_manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval knows no task {unknown}; paper tasks: {PAPER_TASKS} (or give include_path)")

    model = model.to(device).eval()
    lm = ContinuationOnlyLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=torch.float32)
    with _bootstrap_in_process():
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(lm_names),
            num_fewshot=0,
            limit=limit,
            task_manager=task_manager,
            log_samples=True,
            bootstrap_iters=bootstrap_iters,
        )
    rows: list[dict[str, Any]] = []
    correct: dict[str, dict[str, dict[int, bool]]] = {}
    for lm_name, name in lm_names.items():
        task_results = results["results"][lm_name]
        n_samples = int(results["n-samples"][lm_name]["effective"])
        rows.extend(_metric_rows(name, task_results, n_samples))
        samples = results.get("samples", {}).get(lm_name, [])
        per_metric = {
            metric: {int(sample["doc_id"]): bool(sample[metric]) for sample in samples}
            for metric in CORRECTNESS_METRICS
            if samples and all(metric in sample for sample in samples)
        }
        correct[name] = per_metric
    return HarnessResult(rows=rows, correct=correct)


def _metric_rows(task: str, task_results: dict[str, Any], n_samples: int) -> list[dict[str, Any]]:
    rows = []
    for key, value in task_results.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filter_name = key.split(",", 1)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        stderr = task_results.get(f"{metric}_stderr,{filter_name}")
        stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
        rows.append(
            {
                "task": task,
                "metric": metric if filter_name == "none" else f"{metric},{filter_name}",
                "value": float(value),
                "stderr": stderr,
                "n_samples": n_samples,
            }
        )
    return rows
