"""Adding a seed to a materialized study: Dagster sees exactly the new partitions as missing, and a rerun
computes only those, leaving every existing artifact byte for byte (and file time) as it was."""

import hashlib
from pathlib import Path

import dagster as dg
import pytest
import yaml

from calib_assets.defs import build_definitions
from calib_assets.runner import run_study
from calib_assets.study import STUDIES_DIR, Study

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("incrementality")]


def _study(seeds: list[int]) -> Study:
    raw = yaml.safe_load((STUDIES_DIR / "ci.yaml").read_text())
    raw["methods"] = [m for m in raw["methods"] if m["method"] in {"wanda", "rtn"}]
    raw["evaluation"]["tasks"] = []
    raw["calibration"]["seeds"] = seeds
    return Study.model_validate(raw)


def _files(root: Path) -> dict[str, tuple[str, int]]:
    return {str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))
            if path.is_file() and "warehouse" not in path.name and path.parts[len(root.parts)] != "report"}


def _missing(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, set[str]]:
    missing = {}
    for spec in defs.resolve_all_asset_specs():
        if spec.partitions_def is None:
            continue
        done = instance.get_materialized_partitions(spec.key)
        keys = set(spec.partitions_def.get_partition_keys()) - done
        if keys:
            missing[spec.key.to_user_string()] = keys
    return missing


def test_a_new_seed_runs_only_its_new_partitions(tmp_path):
    before, after = _study([0, 1]), _study([0, 1, 2])
    with dg.instance_for_test() as instance:
        run_study(build_definitions(before, root=str(tmp_path)), before, instance, echo=lambda line: None)
        existing = _files(tmp_path)
        defs = build_definitions(after, root=str(tmp_path))
        variant = after.variant_keys[0]
        assert _missing(defs, instance) == {
            "calibration_set": {"abc-news.s2|tiny-llama"},
            "calib_inspection": {"abc-news.s2|tiny-llama"},
            "compressed_model": {f"abc-news.s2|{variant}"},
            "evaluation": {f"abc-news.s2|{variant}"},
        }
        lines: list[str] = []
        run_study(defs, after, instance, echo=lines.append)
    computed = {line.split()[2] + " " + line.split()[3] for line in lines if line.startswith("[") and " done " in line}
    assert computed == {"build_calibration_sets abc-news.s2|tiny-llama",
                        f"compress_and_evaluate abc-news.s2|{variant}",
                        "findings (unpartitioned)"}
    now = _files(tmp_path)
    # nothing rewritten, not even touched (the warehouse and the report summarize every result, new ones too)
    assert {path: now[path] for path in existing} == existing
    assert any("abc-news.s2" in path for path in set(now) - set(existing))
