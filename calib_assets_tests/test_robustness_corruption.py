"""Issue 21's reliability matrix, corrupt artifacts: on a copy of the materialized `ci` study, a flipped byte
in a checkpoint, an edited samples.jsonl, a truncated corpus, a broken manifest, a damaged tokens.npy of the
second set. Each is found, named with its file and partition, and rebuilt by a run; nothing else changes."""

import json
import shutil

import dagster as dg
import numpy as np
import pytest

from calib_assets import steps
from calib_assets.artifacts import CorruptArtifact, verify_contents
from calib_assets.calibration import load_calibration_set
from calib_assets.cli import main as cli_main
from calib_assets.compression import load_checkpoint
from calib_assets.defs import build_definitions
from calib_assets.lineage import LineageError, export_calibration, trace
from calib_assets.runner import run_study

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]


@pytest.fixture
def copy(materialized, tmp_path):
    study, _, root, _, _ = materialized
    target = tmp_path / "root"
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("model-cache", "*.wal"))
    return study, target


def flip_byte(path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def verify_lines(study, root, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(root))
    code = cli_main(["--study", study.name, "verify"])
    return code, capsys.readouterr().out


def rerun(study, root, lines: list[str]) -> None:
    with dg.instance_for_test() as instance:
        run_study(build_definitions(study, root=str(root)), study, instance, echo=lines.append,
                  log_path=root.parent / "steps.log")


def test_a_flipped_byte_in_a_checkpoint_is_found_and_rebuilt(copy, monkeypatch, capsys):
    study, root = copy
    variant, calib = study.variant_keys[0], study.calib_keys[0]
    directory = steps.checkpoint_dir(root, variant, calib)
    tensors = directory / "tensors.safetensors"
    original = tensors.read_bytes()
    flip_byte(tensors)

    code, out = verify_lines(study, root, monkeypatch, capsys)
    assert code == 1 and f"compressed_model [{variant}|{calib}]: {tensors} was changed" in out
    assert "1 problem(s)" in out
    checkpoint = next(node for node in trace(study, root, f"{variant}|{calib}") if node.asset == "compressed_model")
    assert checkpoint.problems and "corrupt" in checkpoint.problems[0] and str(tensors) in checkpoint.problems[0]
    with pytest.raises(CorruptArtifact, match=f"{tensors}.*re-materialize its compressed_model"):
        load_checkpoint(directory)

    lines = []
    rerun(study, root, lines)
    assert not verify_contents(directory)
    assert tensors.read_bytes() == original  # compression is deterministic: the same bytes again
    assert any(variant in line and calib in line and " done " in line for line in lines)  # rebuilt, not reused
    assert verify_lines(study, root, monkeypatch, capsys)[0] == 0


def test_an_edited_samples_jsonl_is_found_and_never_exported(copy, monkeypatch, capsys, tmp_path):
    study, root = copy
    model, calib = study.models[0].name, study.calib_keys[1]
    directory = steps.calibration_dir(root, model, calib)
    samples = directory / "samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["text"] = rows[0]["text"].replace(rows[0]["text"][:5], "EDIT!", 1)
    rows[1]["doc_id"] = "someone-else"
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))

    code, out = verify_lines(study, root, monkeypatch, capsys)
    assert code == 1 and f"calibration_set [{model}|{calib}]: {samples}" in out
    with pytest.raises(CorruptArtifact, match="samples.jsonl"):
        load_calibration_set(directory)
    with pytest.raises((CorruptArtifact, LineageError), match="samples.jsonl"):
        export_calibration(study, root, model, calib, tmp_path / "export")
    assert not (tmp_path / "export").exists()

    lines = []
    rerun(study, root, lines)
    rebuilt = load_calibration_set(directory)
    assert rebuilt.texts[0] != rows[0]["text"] and rebuilt.doc_ids[1] != "someone-else"


def test_the_fingerprint_covers_the_text_even_with_a_new_seal(copy):
    """Someone who edits samples.jsonl and re-seals the folder still does not get past the fingerprint."""
    from calib_assets.artifacts import seal

    study, root = copy
    directory = steps.calibration_dir(root, study.models[0].name, study.calib_keys[0])
    samples = directory / "samples.jsonl"
    samples.write_text(samples.read_text().replace('"text": "', '"text": "X', 1))
    seal(directory)
    with pytest.raises(CorruptArtifact, match="fingerprint"):
        load_calibration_set(directory)


@pytest.mark.parametrize("damage", ["truncated corpus", "broken manifest", "damaged tokens of the second set"])
def test_damage_is_named_with_its_file_and_partition(copy, damage, monkeypatch, capsys):
    study, root = copy
    model = study.models[0].name
    if damage == "truncated corpus":
        asset, partition = "text_corpus", study.source_names[0]
        path = steps.corpus_dir(root, partition) / "corpus.parquet"
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "broken manifest":
        variant, calib = study.variant_keys[1], study.calib_keys[1]
        asset, partition = "compressed_model", f"{variant}|{calib}"
        path = steps.checkpoint_dir(root, variant, calib) / "manifest.json"
        path.write_text(path.read_text()[:-10])
    else:
        calib = study.calib_keys[1]
        asset, partition = "calibration_set", f"{model}|{calib}"
        path = steps.calibration_dir(root, model, calib) / "tokens.npy"
        tokens = np.load(path)
        tokens[0, 0] += 1
        np.save(path, tokens)

    code, out = verify_lines(study, root, monkeypatch, capsys)
    assert code == 1
    named = [line for line in out.splitlines() if line.startswith(f"{asset} [{partition}]: {path}")]
    assert len(named) == 1, out
    assert out.count("problem(s)") == 1 and "1 problem(s)" in out  # the other partitions are intact

    lines = []
    rerun(study, root, lines)  # each damaged artifact is rebuilt by its own step
    assert verify_lines(study, root, monkeypatch, capsys)[0] == 0


def test_a_corrupt_model_cache_is_rebuilt_with_the_same_weights(tmp_path):
    """Before, the cache was trusted whenever config.json existed: the changed weights got a new
    fingerprint and every downstream artifact was rebuilt on them."""
    from calib_assets.models import RandomLlama, prepare_model_folder, weights_fingerprint

    spec = RandomLlama(name="tiny")
    folder = prepare_model_folder(spec, tmp_path)
    weights = next(folder.glob("*.safetensors"))
    original, fingerprint = weights.read_bytes(), weights_fingerprint(folder)
    flip_byte(weights)
    assert verify_contents(folder)
    assert prepare_model_folder(spec, tmp_path) == folder
    assert weights.read_bytes() == original and weights_fingerprint(folder) == fingerprint
    assert not verify_contents(folder)
