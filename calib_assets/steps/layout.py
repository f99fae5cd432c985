"""Where every artifact lives, which code version made it, and its manifest: the paths are deterministic
from asset and partition, and `reuse_or_build` is the one place that decides whether an artifact on disk
can be reused instead of recomputed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from calib_assets.artifacts import check_contents, read_json, sha256_json, verify_contents
from calib_assets.naming import partition_key
from calib_assets.study import Study

CODE_VERSIONS = {
    "base_model": "1",
    "text_corpus": "1",
    "calibration_pool": "1",
    "calibration_set": "2",  # 2: the fingerprint covers the exported text, doc ids and offsets too
    "set_descriptors": "1",
    "calib_inspection": "1",
    # compressed_model 2: SpQR quantized statistics, transposed OBS column loop; 3: bf16 attention by query
    # blocks; 4: Hessians of bf16 inputs on the CPU's bf16 units (fp32 sums in another order)
    "compressed_model": "4",
    "offline_tasks": "1",
    "evaluation": "3",  # 3: task rows carry lm-eval's stderr
    "eval_results": "2",  # 2: task_outcomes (per-example answers) written beside eval_results
    "findings_report": "1",
}
MANIFEST = "manifest.json"


# -- paths ---------------------------------------------------------------------------------------
def model_dir(root: Path, model: str) -> Path:
    return root / "models" / model


def corpus_dir(root: Path, source: str) -> Path:
    return root / "corpora" / source


def pool_dir(root: Path, model: str, source: str) -> Path:
    return root / "calibration-pools" / model / source


def calibration_dir(root: Path, model: str, calib: str) -> Path:
    return root / "calibration" / model / calib


def checkpoint_dir(root: Path, variant: str, calib: str | None = None) -> Path:
    return root / "checkpoints" / variant / (calib or "no-calibration")


def tasks_dir(root: Path, task: str) -> Path:
    return root / "tasks" / task


def evaluation_dir(root: Path, variant: str, calib: str | None = None) -> Path:
    return root / "evaluations" / variant / (calib or "no-calibration")


def warehouse_path(root: Path) -> Path:
    return root / "warehouse.duckdb"


def study_artifacts(study: Study, root: Path) -> list[tuple[str, str, Path]]:
    """(asset, partition, directory) of every artifact the study can have under `root`, upstream first."""
    models = [model.name for model in study.models]
    found = [("base_model", m, model_dir(root, m)) for m in models]
    found += [("text_corpus", name, corpus_dir(root, name)) for name in study.corpus_names]
    found += [("calibration_pool", partition_key(model=m, source=source), pool_dir(root, m, source)) for m in models
              for source in study.source_names]
    found += [("calibration_set", partition_key(model=m, calib=calib), calibration_dir(root, m, calib)) for m in models
              for calib in study.calib_keys]
    found += [("offline_tasks", task.name, tasks_dir(root, task.name)) for task in study.offline_tasks]
    calibrated = [(variant, calib) for variant in study.variant_keys for calib in study.calib_keys]
    found += [("compressed_model", partition_key(variant=variant, calib=calib), checkpoint_dir(root, variant, calib))
              for variant, calib in calibrated]
    found += [("compressed_model", variant, checkpoint_dir(root, variant)) for variant in study.baseline_keys
              if study.parse_variant(variant)[1] is not None]
    found += [("evaluation", partition_key(variant=variant, calib=calib), evaluation_dir(root, variant, calib))
              for variant, calib in calibrated]
    found += [("baseline_eval", variant, evaluation_dir(root, variant)) for variant in study.baseline_keys]
    return found + [("findings_report", "(unpartitioned)", root / "report")]


def verify_study(study: Study, root: Path) -> tuple[list[str], int, int]:
    """(one line per problem, artifacts checked, artifacts not materialized) over `study_artifacts`."""
    problems, checked, missing = [], 0, 0
    for asset, partition, directory in study_artifacts(study, root):
        if not directory.is_dir():
            missing += 1
            continue
        checked += 1
        problems += [f"{asset} [{partition}]: {problem}" for problem in verify_contents(directory)]
    return problems, checked, missing


# -- manifests -----------------------------------------------------------------------------------
def step_inputs(step: str, **inputs: Any) -> tuple[dict[str, Any], str]:
    """What a step builds its artifact from (its code version included) and the hash of that."""
    inputs = {"step": step, "code_version": CODE_VERSIONS[step], **inputs}
    return inputs, sha256_json(inputs)


def reuse_or_build(what: str, directory: Path, built_from: str | dict[str, Any], build: Callable[[], dict[str, Any]],
                   *, log: Callable[[str], None] = print, side_record: str | None = None) -> dict[str, Any]:
    """The artifact's manifest, marked reused, when it was built from exactly `built_from` and its files still
    match their seal; else `build()`'s (which writes the artifact), saying why when a corrupt one was there.

    `built_from`: the inputs hash its manifest records, or (the base model, whose manifest is all of its
    inputs) the whole manifest. `side_record`: the artifact is that file inside `directory`, written after
    the directory was sealed (a set's descriptors): outside the seal, and reused as it is stored."""
    record = directory / (side_record or MANIFEST)
    if not record.is_file():
        return build()
    if side_record is None and (problems := verify_contents(directory)):
        log(f"{what}: rebuilding it, its files do not match what was written: {'; '.join(problems)}")
        return build()
    stored = read_json(record)
    same = stored == built_from if isinstance(built_from, dict) else stored.get("inputs_hash") == built_from
    if not same:
        return build()
    return stored if side_record else {**stored, "reused": True}


def read_manifest(directory: Path, asset: str, partition: str) -> dict[str, Any]:
    """An upstream artifact's manifest, once its files are checked against their seal."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{asset} [{partition}] is not materialized (no {str(path)!r}): materialize it first")
    check_contents(directory, f"{asset} [{partition}]", allow_unsealed=False,
                   rebuild_hint=rebuild_hint(asset, partition))
    return read_json(path)


def stored_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest under `directory` as it is on disk (unchecked), or None when there is none."""
    path = directory / MANIFEST
    return read_json(path) if path.is_file() else None


def rebuild_hint(asset: str, partition: str) -> str:
    return (f"re-materialize {asset} [{partition}]: its own step rebuilds a corrupt artifact (`calib-assets run` "
            "does, in order), and the steps that read it then run on the rebuilt one")
