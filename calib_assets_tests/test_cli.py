"""`calib-assets lineage`, `export-calibration` and `export-model` on the materialized CI study."""

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from calib_assets import steps
from calib_assets.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]


@pytest.fixture
def cli(materialized, capsys, monkeypatch):
    """Run the CLI in-process on the materialized study: (exit code, stdout, stderr)."""
    _, _, root, _, _ = materialized
    monkeypatch.delenv("CALIB_ASSETS_ROOT", raising=False)

    def run(*args: str, root_dir: Path = root):
        code = main(["--study", "ci", "--root", str(root_dir), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _samples(root: Path, model: str, calib: str) -> list[dict]:
    text = (steps.calibration_dir(root, model, calib) / "samples.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_lineage_of_a_checkpoint_in_either_key_order(materialized, cli):
    study, _, root, _, _ = materialized
    variant, calib = study.variant_keys[1], study.calib_keys[0]
    code, out, _ = cli("lineage", f"{variant}|{calib}", "--json")
    assert code == 0
    chain = json.loads(out)
    assert [node["asset"] for node in chain] == ["evaluation", "compressed_model", "calibration_set",
                                                 "calibration_pool", "text_corpus", "base_model"]
    assert cli("lineage", f"{calib}|{variant}", "--json")[1] == out
    tokens = np.load(steps.calibration_dir(root, study.models[0].name, calib) / "tokens.npy")
    token_sha = hashlib.sha256(repr(tokens.shape).encode() + tokens.astype("<i8").tobytes()).hexdigest()
    rows = _samples(root, study.models[0].name, calib)  # what export-calibration publishes as the set
    assert chain[2]["fingerprint"] == hashlib.sha256(token_sha.encode()
                                                     + json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert chain[1]["details"]["calibration_fingerprint"] == chain[2]["fingerprint"]
    assert chain[2]["details"]["doc_ids"] == [s["doc_id"] for s in _samples(root, study.models[0].name, calib)]
    assert all(node["materialized"] and not node["problems"] for node in chain)


def test_lineage_of_a_result_shows_the_values_in_the_warehouse(materialized, cli):
    study, _, root, _, _ = materialized
    variant, calib, dataset = study.variant_keys[0], study.calib_keys[1], f"{study.eval_datasets[0]}-heldout"
    code, out, _ = cli("lineage", f"{variant}|{calib}", "--metric", "perplexity", "--dataset", dataset, "--json")
    with duckdb.connect(str(steps.warehouse_path(root)), read_only=True) as connection:
        expected = connection.execute("select value from eval_results where variant = ? and calib = ? and "
                                      "metric = 'perplexity' and eval_dataset = ?",
                                      [variant, calib, dataset]).fetchall()
    results = json.loads(out)[0]["details"]["results"]
    assert code == 0 and len(results) == len(expected) == 1
    assert results[0]["value"] == pytest.approx(expected[0][0], rel=1e-12)


def test_lineage_text_of_a_calibration_set_and_of_the_dense_model(materialized, cli):
    study, _, root, _, _ = materialized
    model, calib = study.models[0].name, study.calib_keys[0]
    code, out, _ = cli("lineage", f"{model}|{calib}")
    fingerprint = json.loads((steps.calibration_dir(root, model, calib) / "manifest.json").read_text())["fingerprint"]
    assert code == 0 and out.startswith("   calibration_set [") and fingerprint in out
    assert f"{study.calibration.n_samples} windows: {_samples(root, model, calib)[0]['doc_id']}" in out
    code, out, _ = cli("lineage", f"{model}.dense", "--json")
    chain = json.loads(out)
    assert code == 0 and [node["asset"] for node in chain] == ["baseline_eval", "base_model"]
    assert chain[0]["details"]["checkpoint_fingerprint"] == chain[1]["fingerprint"]


def test_export_calibration_writes_the_exact_data(materialized, cli, tmp_path):
    study, _, root, _, _ = materialized
    model, calib = study.models[0].name, study.calib_keys[1]
    out = tmp_path / "export"
    code, stdout, _ = cli("export-calibration", model, calib, "--out", str(out))
    assert code == 0 and str(out) in stdout
    tokens = np.load(steps.calibration_dir(root, model, calib) / "tokens.npy")
    np.testing.assert_array_equal(np.load(out / "token_ids.npy"), tokens)
    assert [json.loads(line) for line in (out / "token_ids.jsonl").read_text().splitlines()] == tokens.tolist()
    exported = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [{k: s[k] for k in ("doc_id", "offset", "text")} for s in exported] == _samples(root, model, calib)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert manifest["calibration_set"]["doc_ids"] == [s["doc_id"] for s in exported]
    assert [node["asset"] for node in manifest["lineage"]] == ["calibration_set", "calibration_pool", "text_corpus",
                                                               "base_model"]


def test_export_refuses_a_non_empty_directory_unless_forced(materialized, cli, tmp_path):
    study, _, _, _, _ = materialized
    model, calib = study.models[0].name, study.calib_keys[0]
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = cli("export-calibration", model, calib, "--out", str(out))
    assert code == 2 and "not empty" in err and "--force" in err and sorted(os.listdir(out)) == ["notes.txt"]
    code, _, _ = cli("export-calibration", model, calib, "--out", str(out), "--force")
    assert code == 0 and sorted(os.listdir(out)) == sorted(["notes.txt", "samples.jsonl", "token_ids.npy",
                                                            "token_ids.jsonl", "manifest.json"])
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["lineage", "no-such-model.gptq|abc-news.s0"], "variants: tiny-llama.gptq-w3g32"),
    (["lineage", "tiny-llama.gptq-w3g32"], "abc-news.s0, abc-news.s1"),
    (["lineage", "tiny-llama.gptq-w3g32|abc-news.s9"], "calibs: abc-news.s0, abc-news.s1"),
    (["lineage", "tiny-llama.gptq-w3g32|abc-news.s0", "--metric", "bleu"], "metrics: acc, acc_norm"),
    (["export-calibration", "gpt-2", "abc-news.s0", "--out", "{tmp}/x"], "allowed: tiny-llama"),
    (["export-calibration", "tiny-llama", "wiki.s0", "--out", "{tmp}/x"], "allowed: abc-news.s0, abc-news.s1"),
    (["export-calibration", "tiny-llama", "abc-news.s0", "--out", "{tmp}/file"], "is a file"),
])
def test_bad_arguments_end_with_a_clear_message_and_exit_code_2(cli, tmp_path, args, message):
    (tmp_path / "file").write_text("x")
    code, out, err = cli(*[arg.format(tmp=tmp_path) for arg in args])
    assert code == 2 and err.startswith("error: ") and message in err and out == ""
    assert not (tmp_path / "x").exists()


def test_a_partition_not_materialized_yet_is_named(cli, tmp_path):
    code, _, err = cli("lineage", "tiny-llama.gptq-w3g32|abc-news.s0", root_dir=tmp_path)
    assert code == 2 and "compressed_model [abc-news.s0|tiny-llama.gptq-w3g32] is not materialized yet" in err
    code, _, err = cli("export-calibration", "tiny-llama", "abc-news.s0", "--out", str(tmp_path / "x"),
                       root_dir=tmp_path)
    assert code == 2 and "calibration_set [abc-news.s0|tiny-llama] is not materialized yet" in err


def test_the_console_command_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "CALIB_ASSETS_ROOT": str(tmp_path)}
    completed = subprocess.run([sys.executable, "-m", "calib_assets.cli", "--study", "ci", "lineage", "nope"],
                               env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.startswith("error: 'nope' is not a partition of study 'ci'")


def test_export_model_writes_a_folder_with_the_compressed_weights(materialized, cli, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    study, _, root, _, _ = materialized
    variant, calib = study.variant_keys[0], study.calib_keys[0]
    code, out, _ = cli("export-model", f"{variant}|{calib}", "--out", str(tmp_path / "hf"))
    assert code == 0 and "from_pretrained" in out
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    expected, _, _ = steps.load_variant_model(study, variant, calib, root)
    for name, tensor in expected.state_dict().items():
        assert torch.equal(exported.state_dict()[name].float(), tensor.float()), name
    code, _, err = cli("export-model", f"{variant}|{calib}", "--out", str(tmp_path / "hf"))
    assert code == 2 and "holds an earlier export; pass --force" in err


def test_export_model_as_compressed_tensors_names_its_calibration_data(materialized, cli, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    study, _, root, _, _ = materialized
    calib = study.calib_keys[1]
    for variant in ("tiny-llama.gptq-w3g32", "tiny-llama.awq-w3g32"):
        out = tmp_path / variant
        code, stdout, _ = cli("export-model", f"{variant}|{calib}", "--format", "compressed-tensors", "--out", str(out))
        assert code == 0 and "wrote a compressed-tensors folder" in stdout and "dequantize=True" in stdout
        exported = AutoModelForCausalLM.from_pretrained(out, quantization_config=CompressedTensorsConfig(
            dequantize=True))
        expected, _, _ = steps.load_variant_model(study, variant, calib, root)
        ids = torch.arange(40).reshape(2, 20)
        with torch.no_grad():
            assert torch.equal(exported(ids).logits, expected(ids).logits), variant
    sidecar = json.loads((out / "calibration.json").read_text())
    calibration = steps.calibration_manifest(root, "tiny-llama", calib)
    assert sidecar["calibration_set"]["partition"] == f"{calib}|tiny-llama"  # as the Dagster UI writes it
    assert sidecar["calibration_set"]["fingerprint"] == calibration["fingerprint"]
    assert sidecar["checkpoint"]["fingerprint"] == steps.variant_manifest(study, variant, calib, root)["fingerprint"]
    command = shlex.split(sidecar["calibration_set"]["export"])  # the command it gives exports that very set
    assert command[:5] == ["calib-assets", "--study", "ci", "--root", str(root)]
    code, _, _ = cli(*command[5:-1], str(tmp_path / "data"))
    published = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert code == 0 and published["calibration_set"]["fingerprint"] == calibration["fingerprint"]


def test_export_model_hf_sidecars_and_what_compressed_tensors_refuses(materialized, cli, tmp_path):
    study, _, _, _, _ = materialized
    calib = study.calib_keys[0]
    code, _, _ = cli("export-model", f"tiny-llama.wanda-2of4|{calib}", "--out", str(tmp_path / "wanda"))
    sidecar = json.loads((tmp_path / "wanda" / "calibration.json").read_text())
    assert code == 0 and sidecar["sparsity"]["pattern"] == "2:4" and sidecar["sparsity"]["measured"] == 0.5
    code, _, _ = cli("export-model", "tiny-llama.rtn-w3g32", "--format", "compressed-tensors", "--out",
                     str(tmp_path / "rtn"))
    sidecar = json.loads((tmp_path / "rtn" / "calibration.json").read_text())
    assert code == 0 and sidecar["calibration_set"] is None
    assert sidecar["checkpoint"] == {"asset": "baseline_model", "partition": "tiny-llama.rtn-w3g32",
                                     "fingerprint": steps.variant_manifest(study, "tiny-llama.rtn-w3g32", None,
                                                                           materialized[2])["fingerprint"]}
    for variant, message in (("tiny-llama.spqr-w3g16", "quantized statistics"),
                             ("tiny-llama.sparsegpt-2of4", "holds no quantized weights")):
        code, out, err = cli("export-model", f"{variant}|{calib}", "--format", "compressed-tensors", "--out",
                             str(tmp_path / "refused"))
        assert code == 2 and message in err and "format 'hf'" in err
        assert out == "" and not (tmp_path / "refused").exists()


@pytest.mark.parametrize("target, message", [
    ("tiny-llama.dense", "is the dense model"),
    ("tiny-llama|abc-news.s0", "calibration_set partition, not a model"),
    ("tiny-llama.gptq-w3g32", "has one checkpoint per calibration set"),
])
def test_export_model_refuses_what_is_not_a_compressed_model(cli, tmp_path, target, message):
    code, out, err = cli("export-model", target, "--out", str(tmp_path / "hf"))
    assert code == 2 and message in err and out == "" and not (tmp_path / "hf").exists()
