"""The CI study end to end on a tiny random-weight Llama, in a temporary Dagster instance."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from calib_assets import steps
from calib_assets.artifacts import CorruptArtifact, seal
from calib_assets.runner import run_study

# `materialized` (conftest.py): the CI study, materialized once per session; tests that use it share the
# xdist group "pipeline" so that they run in the one worker that holds it.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]


def _table(root: Path, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(steps.warehouse_path(root)), read_only=True) as connection:
        return connection.sql(sql).df()


def test_every_partition_lands_in_eval_results(materialized):
    study, _, root, _, _ = materialized
    results = _table(root, "select * from eval_results")
    expected_models = len(study.variant_keys) * len(study.calib_keys) + len(study.baseline_keys)
    perplexities = results[results["eval_dataset"].str.endswith("-heldout") & (results["metric"] == "perplexity")]
    assert len(perplexities) == expected_models * len(study.eval_datasets)
    assert (perplexities["value"] > 1).all()
    assert np.isfinite(results["value"]).all()
    compressed = expected_models - len(study.models)  # every variant but the dense model
    assert (results["metric"] == "kl_vs_dense").sum() == compressed
    tasks = {task.name for task in study.evaluation.tasks}
    assert tasks and set(results.loc[results["metric"] == "acc", "eval_dataset"]) == tasks
    accuracies = results[results["metric"].isin(["acc", "acc_norm", "acc_flip_share", "acc_norm_flip_share"])]
    assert accuracies["value"].between(0, 1).all()
    assert set(results.columns) >= {"model", "method", "method_config", "calibration_source", "seed",
                                    "calibration_fingerprint", "checkpoint_fingerprint", "eval_dataset",
                                    "value", "token_count", "code_version", "run_id", "evaluated_at"}
    calibrated = results[results["calibration_source"].notna()]
    assert calibrated["calibration_fingerprint"].notna().all()


def test_spread_mart_matches_a_pandas_computation(materialized):
    _, _, root, _, _ = materialized
    results = _table(root, "select * from eval_results where calibration_source is not null")
    expected = (results.groupby(["variant", "calibration_source", "eval_dataset", "metric"])["value"]
                .agg(["count", "mean", "std", "min", "max"]).reset_index())
    mart = _table(root, "select * from mart_spread where kind <> 'task_average'")  # derived rows
    merged = expected.merge(mart, on=["variant", "calibration_source", "eval_dataset", "metric"], validate="1:1")
    assert len(merged) == len(expected) == len(mart)
    assert (merged["count"] == merged["n_sets"]).all()
    np.testing.assert_allclose(merged["mean_value"], merged["mean"], rtol=1e-12)
    np.testing.assert_allclose(merged["std_value"], merged["std"], rtol=1e-9)
    np.testing.assert_allclose(merged["range_value"], merged["max"] - merged["min"], rtol=1e-12)


def test_dense_model_is_evaluated_once_per_model_not_per_calibration_set(materialized):
    study, _, root, _, _ = materialized
    baselines = _table(root, "select * from mart_baselines where metric = 'perplexity' "
                             "and eval_dataset like '%-heldout'")
    assert sorted(baselines["variant"].unique()) == sorted(study.baseline_keys)
    assert len(baselines) == len(study.baseline_keys) * len(study.eval_datasets)


def test_flip_shares_match_a_hand_count_against_the_dense_model(materialized):
    study, _, root, _, _ = materialized
    variant, calib = study.variant_keys[0], study.calib_keys[0]
    dense = pd.read_parquet(steps.evaluation_dir(root, f"{study.models[0].name}.dense") / "correct.parquet")
    own = pd.read_parquet(steps.evaluation_dir(root, variant, calib) / "correct.parquet")
    merged = own.merge(dense, on=["task", "metric", "example"], suffixes=("", "_dense"))
    expected = (merged["correct"] != merged["correct_dense"]).groupby([merged["task"], merged["metric"]]).mean()
    results = _table(root, f"select * from eval_results where variant = '{variant}' and calib = '{calib}' "
                           "and metric like '%_flip_share'")
    assert len(results) == len(expected) > 0
    for row in results.itertuples():
        assert row.value == pytest.approx(expected[(row.eval_dataset, row.metric.removesuffix("_flip_share"))])


def test_task_rows_carry_the_stderr_of_their_per_example_outcomes(materialized):
    study, _, root, _, _ = materialized
    variant, calib = study.variant_keys[0], study.calib_keys[0]
    own = pd.read_parquet(steps.evaluation_dir(root, variant, calib) / "correct.parquet")
    results = _table(root, f"select * from eval_results where variant = '{variant}' and calib = '{calib}'")
    accuracies = results[results["metric"].isin(["acc", "acc_norm"])]
    assert len(accuracies) == own.groupby(["task", "metric"]).ngroups > 0
    for row in accuracies.itertuples():
        outcomes = own.loc[(own["task"] == row.eval_dataset) & (own["metric"] == row.metric), "correct"]
        assert row.stderr == pytest.approx(outcomes.astype(float).std(ddof=1) / np.sqrt(len(outcomes)))
    bootstrapped = results[(results["metric"] == "perplexity") & ~results["eval_dataset"].str.endswith("-heldout")]
    assert len(bootstrapped) and (bootstrapped["stderr"] > 0).all() and np.isfinite(bootstrapped["stderr"]).all()


def test_offline_tasks_use_only_heldout_documents(materialized):
    study, _, root, _, _ = materialized
    heldout = set()
    for source in study.eval_datasets:
        corpus = pd.read_parquet(next(steps.corpus_dir(root, source).glob("*.parquet")))
        heldout |= set(corpus.loc[corpus["split"] == "heldout", "doc_id"])
    for task in study.offline_tasks:
        rows = [json.loads(line) for line in (steps.tasks_dir(root, task.name) / "test.jsonl").read_text().splitlines()]
        used = {row["doc_id"] for row in rows} | {d for row in rows for d in row.get("distractor_doc_ids", [])}
        assert len(rows) == task.n_examples and used <= heldout


def test_data_versions_are_content_hashes(materialized):
    study, _, root, instance, _ = materialized
    variant, calib = study.variant_keys[0], study.calib_keys[0]
    key = dg.MultiPartitionKey({"variant": variant, "calib": calib})
    event = instance.get_latest_materialization_event(dg.AssetKey("compressed_model"))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("compressed_model"), asset_partitions=[key]), limit=1).records
    tags = records[0].event_log_entry.asset_materialization.tags
    tensors = next(steps.checkpoint_dir(root, variant, calib).glob("*.safetensors"))
    assert tags["dagster/data_version"] == hashlib.sha256(tensors.read_bytes()).hexdigest()
    assert event is not None


def test_a_model_held_in_bf16_makes_a_checkpoint_of_its_own(materialized, tmp_path):
    """compute.model_dtype: bfloat16 is an input of the checkpoint (a new inputs hash, pruned values
    stored in bf16, loading gives the bf16-held model's weights); at the float32 default the materialized
    checkpoints keep their inputs hash and are reused, byte for byte."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from calib_assets.calibration import load_calibration_set
    from calib_assets.compression import compress_model
    from calib_assets.models import load_model

    study, _, root, _, _ = materialized
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    variant, calib = next(v for v in study.variant_keys if ".sparsegpt" in v), study.calib_keys[0]
    directory = steps.checkpoint_dir(copy, variant, calib)
    tensors_file = next(directory.glob("*.safetensors"))
    before, before_bytes = json.loads((directory / "manifest.json").read_text()), tensors_file.read_bytes()
    assert "model_dtype" not in before["inputs"]
    reused = steps.materialize_checkpoint(study, variant, calib, copy, device="cpu", forward_dtype=torch.float32)
    assert reused["inputs_hash"] == before["inputs_hash"] and tensors_file.read_bytes() == before_bytes

    held = study.model_copy(update={"compute": study.compute.model_copy(update={"model_dtype": "bfloat16"})})
    manifest = steps.materialize_checkpoint(held, variant, calib, copy, device="cpu", forward_dtype=torch.float32)
    assert manifest["inputs"]["model_dtype"] == "bfloat16" and manifest["inputs_hash"] != before["inputs_hash"]
    values = {k: t for k, t in load_file(str(next(directory.glob("*.safetensors")))).items() if k.endswith(".values")}
    assert values and all(t.dtype == torch.bfloat16 for t in values.values())

    base = steps.base_model_manifest(copy, study.models[0].name)
    expected, _ = load_model(Path(base["folder"]), dtype=torch.bfloat16)
    ids = load_calibration_set(steps.calibration_dir(copy, study.models[0].name, calib)).input_ids()
    compress_model(expected, ids, study.parse_variant(variant)[1].config, forward_dtype=torch.float32,
                   batch_size=study.compute.batch_size)
    loaded, _, _ = steps.load_variant_model(held, variant, calib, copy)
    for key, tensor in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key].to(torch.bfloat16), tensor), key


def _calibration_fingerprint(directory: Path) -> str:
    """A set's fingerprint computed from its files: what is exported, token ids and every samples.jsonl row."""
    tokens = np.load(directory / "tokens.npy")
    token_digest = hashlib.sha256(repr(tokens.shape).encode() + tokens.astype("<i8").tobytes()).hexdigest()
    rows = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]
    return hashlib.sha256(token_digest.encode() + json.dumps(rows, sort_keys=True).encode()).hexdigest()


def test_each_checkpoint_descends_from_exactly_its_calibration_set(materialized):
    study, _, root, instance, _ = materialized
    model = study.models[0].name
    for variant in study.variant_keys:
        for calib in study.calib_keys:
            key = dg.MultiPartitionKey({"variant": variant, "calib": calib})
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("compressed_model"), asset_partitions=[key]),
                limit=1).records[0]
            tags = record.event_log_entry.asset_materialization.tags
            digest = _calibration_fingerprint(steps.calibration_dir(root, model, calib))
            # Dagster records sha256 over the data versions of the upstream partitions a step read:
            # for a single partition, the hash of that one calibration set's fingerprint.
            assert tags["dagster/input_data_version/calibration_set"] == hashlib.sha256(digest.encode()).hexdigest()


def test_calibration_sets_are_disjoint_and_never_held_out(materialized):
    study, _, root, _, _ = materialized
    model = study.models[0].name
    for source in study.source_names:
        corpus = pd.read_parquet(next(steps.corpus_dir(root, source).glob("*.parquet")))
        heldout = set(corpus.loc[corpus["split"] == "heldout", "doc_id"])
        texts = dict(zip(corpus["doc_id"], corpus["text"]))
        seen: set[str] = set()
        for seed in study.calibration.seeds:
            directory = steps.calibration_dir(root, model, f"{source}.s{seed}")
            samples = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]
            doc_ids = {sample["doc_id"] for sample in samples}
            assert len(samples) == study.calibration.n_samples == len(doc_ids)
            assert doc_ids.isdisjoint(heldout) and doc_ids.isdisjoint(seen)
            seen |= doc_ids
            for sample in samples:  # byte-level tokenizer: the window's text is a substring of its document
                assert sample["text"] in texts[sample["doc_id"]]


def test_a_second_run_reuses_every_artifact(materialized):
    study, defs, root, instance, _ = materialized
    checkpoint = next(steps.checkpoint_dir(root, study.variant_keys[0], study.calib_keys[0]).glob("*.safetensors"))
    before = checkpoint.stat().st_mtime_ns
    lines: list[str] = []
    run_study(defs, study, instance, echo=lines.append)
    stage_lines = [line for line in lines if line.startswith("[") and "compress_and_evaluate" in line]
    assert stage_lines and all(" reused in " in line for line in stage_lines)
    assert any("Where the time went" in line for line in lines)
    assert not any(" call(s)" in line for line in lines)  # nothing was computed: no step kind took time
    assert checkpoint.stat().st_mtime_ns == before


def test_definitions_load_with_the_dagster_cli():
    env = {**os.environ, "CALIB_ASSETS_STUDY": "ci"}
    completed = subprocess.run(
        [Path(sys.executable).parent / "dagster", "definitions", "validate", "-m", "calib_assets.definitions"],
        env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_blocking_checks_ran_and_passed_for_every_partition(materialized):
    study, _, _, instance, _ = materialized
    for asset, check, expected in [
        ("calibration_set", "calibration_set_valid", len(study.calib_keys) * len(study.models)),
        ("compressed_model", "checkpoint_invariants", len(study.variant_keys) * len(study.calib_keys)),
        ("evaluation", "evaluation_complete", len(study.variant_keys) * len(study.calib_keys)),
        ("baseline_eval", "evaluation_complete", len(study.baseline_keys)),
    ]:
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=1000)
        succeeded = {record.partition for record in history if record.status.value == "SUCCEEDED"}
        assert len(succeeded) == expected, (asset, check, len(history))


def test_calibration_check_catches_a_leak_into_evaluation_text(materialized, tmp_path):
    import shutil

    from calib_assets.invariants import calibration_set_problems

    study, _, root, _, _ = materialized
    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("model-cache", "checkpoints", "*.duckdb"))
    model, calib = study.models[0].name, study.calib_keys[0]
    assert calibration_set_problems(study, copy, model, calib) == []
    source = study.parse_calib(calib)[0]
    corpus = pd.read_parquet(next(steps.corpus_dir(copy, source).glob("*.parquet")))
    leaked = corpus.loc[corpus["split"] == "heldout", "doc_id"].iloc[0]
    samples = steps.calibration_dir(copy, model, calib) / "samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["doc_id"] = leaked
    rows[1]["doc_id"] = rows[2]["doc_id"]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(CorruptArtifact, match=r"samples\.jsonl was changed after it was written"):
        calibration_set_problems(study, copy, model, calib)
    # as if a faulty sampler had written these rows, manifest and seal included: the invariants still catch them
    manifest = json.loads((samples.parent / "manifest.json").read_text())
    manifest["fingerprint"] = _calibration_fingerprint(samples.parent)
    (samples.parent / "manifest.json").write_text(json.dumps(manifest))
    seal(samples.parent)
    problems = calibration_set_problems(study, copy, model, calib)
    assert any("held-out evaluation text" in p for p in problems)
    assert any("more than one window" in p for p in problems)


def test_weekly_reevaluation_requests_every_materialized_checkpoint(materialized):
    study, defs, _, instance, _ = materialized
    schedule = next(s for s in defs.schedules if s.name == "weekly_reevaluate_checkpoints")
    import datetime

    tick = datetime.datetime(2026, 11, 23, 3, tzinfo=datetime.UTC)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick,
                                   repository_def=defs.get_repository_def()) as context:
        requests = list(schedule.evaluate_tick(context).run_requests)
    expected = {str(dg.MultiPartitionKey({"variant": v, "calib": c}))
                for v in study.variant_keys for c in study.calib_keys}
    assert {request.partition_key for request in requests} == expected


def test_every_calibration_set_has_descriptors_in_duckdb(materialized):
    study, _, root, _, _ = materialized
    table = _table(root, "select * from set_descriptors")
    assert sorted(table["calib"]) == sorted(study.calib_keys) * len(study.models)
    assert (table["token_count"] == study.calibration.n_samples * study.calibration.seq_len).all()
    assert (table["perplexity_mean"] > 1).all() and table["eval_ngram4_overlap"].between(0, 1).all()
    assert len(_table(root, "select * from mart_descriptors")) > 0
