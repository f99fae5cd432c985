"""The prepared GPU check (benchmarks/gpu_check.py): its `--cpu` dry run end to end with the orchestration
stack made unimportable (the GPU machine has none of it), and its measuring helpers against independent
counts: torch's FLOP counter, a layer whose output equals its input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

# what the GPU machine lacks (issue 20); pydantic travels there as a wheel
ABSENT_THERE = ["dagster", "dagster_dbt", "dagster_duckdb", "dagster_webserver", "duckdb", "datasets", "lm_eval",
                "gguf", "dbt", "ray", "llmcompressor"]

BLOCKER = """
import importlib.abc, sys
ABSENT = set({absent!r})
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)", name=name)
sys.meta_path.insert(0, Absent())
"""


@pytest.fixture
def gpu_machine_env(tmp_path):
    """An environment in which the packages the GPU machine lacks cannot be imported (a sitecustomize on
    PYTHONPATH, inherited by the check's pytest child)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(absent=ABSENT_THERE))
    env = {**os.environ, "PYTHONPATH": str(site)}
    blocked = subprocess.run([sys.executable, "-c", "import dagster"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "absent on the GPU machine" in blocked.stderr
    return env


def test_the_dry_run_needs_nothing_the_gpu_machine_lacks(gpu_machine_env, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)],
                            env=gpu_machine_env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())

    tests = results["cuda_tests"]
    assert tests["tests"] == 12 and tests["failures"] == tests["errors"] == tests["skipped"] == 0, tests

    ours = {r["method"]: r for r in results["runs"] if r["tool"] == "ours"}
    assert sorted(ours) == sorted(gpu_check.METHODS)
    for name, record in ours.items():
        assert "error" not in record, record
        assert record["wall_s"] > 0 and 0 <= record["forward_share"] <= 1
        assert 0 < record["layer0_error"] < 2, record  # every method changes the layer; none wrecks it
        linears = 7 * gpu_check.TINY["num_hidden_layers"]  # q, k, v, o, gate, up, down
        assert record["linears"] >= linears if name == "awq" else record["linears"] == linears  # + AWQ's norms
    assert ours["rtn"]["passes"] == 0  # needs no calibration data
    # a statistics pass over every layer, reruns over all but the last
    layers = gpu_check.TINY["num_hidden_layers"]
    for name in ("gptq", "sparsegpt", "wanda", "spqr", "awq"):
        assert (2 * layers - 1) / layers <= ours[name]["passes"] < 2, ours[name]
    # GPTQ and SpQR use second-order information, RTN rounds alone: on the same grid GPTQ errs less
    assert ours["gptq"]["layer0_error"] < ours["rtn"]["layer0_error"]

    theirs = [r for r in results["runs"] if r["tool"] == "llmcompressor"]
    assert {r["method"] for r in theirs} == set(gpu_check.METHODS)
    assert all("skipped" in r for r in theirs)  # unimportable here: said, not measured
    assert "not importable" in next(r for r in theirs if r["method"] == "gptq")["skipped"]

    table = (out / "gpu_check.md").read_text()
    assert table in result.stdout
    assert all(f"| {name} |" in table for name in gpu_check.METHODS)
    assert (out / "cuda_tests.xml").exists()


def tiny_setup():
    return gpu_check.Setup.for_device(cpu=True)


def test_flop_formulas_against_torch_flop_counter():
    """Eager attention makes QK^T and AV plain matmuls, which torch's counter counts for every query-key
    pair: twice the causal count."""
    from torch.utils.flop_counter import FlopCounterMode

    from calib_assets.compression import layerwise_hidden_states

    setup = tiny_setup()
    model = gpu_check.build_model(setup).float()
    model.config._attn_implementation = "eager"
    ids = gpu_check.calibration_ids(setup)
    with FlopCounterMode(display=False) as counter:
        layerwise_hidden_states(model, ids, forward_dtype=torch.float32, batch_size=setup.batch_size)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["aten.mm"] == gpu_check.linear_flops(setup)
    assert counter.get_total_flops() - counts["aten.mm"] == 2 * gpu_check.attention_flops(setup)


def test_first_layer_probe():
    setup = tiny_setup()
    model = gpu_check.build_model(setup)
    ids = gpu_check.calibration_ids(setup)
    probe = gpu_check.FirstLayerProbe(model, ids, setup)
    layer = model.model.layers[0]
    assert probe.error(layer.state_dict()) == 0
    # with o_proj and down_proj zeroed the layer adds nothing to its input: an error of exactly 1
    state = {name: (torch.zeros_like(t) if name.endswith(("o_proj.weight", "down_proj.weight")) else t)
             for name, t in layer.state_dict().items()}
    assert probe.error(state) == pytest.approx(1.0, abs=1e-6)


def test_layer_passes():
    assert gpu_check.layer_passes(0, 1536, 512) == 0
    assert gpu_check.layer_passes(1536, 1536, 512) == 1  # the dense pass itself
    assert gpu_check.layer_passes(512 + 3 * 512, 512 + 2 * 512, 512) == 1.5


def test_the_check_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--cpu", "--out", str(tmp_path), "--methods", "gptq,bogus"])
    error = capsys.readouterr().err
    assert "bogus" in error and "allowed" in error
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SystemExit):
        gpu_check.main(["--cpu", "--out", str(afile)])
    assert "is not a folder" in capsys.readouterr().err
    assert afile.read_text() == "x"
