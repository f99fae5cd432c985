"""`calib-assets plan`: partition counts against the study files read directly, the schedule against a brute-force
optimum, parameter counts against transformers, and the command line."""

import itertools
import json
import math
import random

import pytest
import yaml

from calib_assets import plan
from calib_assets.cli import main
from calib_assets.study import STUDIES_DIR, load_study

CALIBRATION_FREE = {"rtn", "magnitude"}


def expected_partitions(name: str) -> dict[str, int]:
    """Partitions per asset, from the YAML file alone."""
    raw = yaml.safe_load((STUDIES_DIR / f"{name}.yaml").read_text())
    models, sources = len(raw["models"]), len(raw["sources"])
    extra = len(raw.get("evaluation", {}).get("extra_datasets", []))
    sizes = raw["calibration"]["n_samples"]
    calibs = sources * len(raw["calibration"]["seeds"]) * (len(sizes) if isinstance(sizes, list) else 1)
    free = sum(m["method"] in CALIBRATION_FREE for m in raw["methods"])
    calibrated = len(raw["methods"]) - free
    return {"base_model": models, "text_corpus": sources + extra, "calibration_pool": models * sources,
            "calibration_set": models * calibs, "calib_inspection": models * calibs, "offline_tasks": 1,
            "baseline_model": models * (1 + free), "baseline_eval": models * (1 + free),
            "compressed_model": models * calibrated * calibs, "evaluation": models * calibrated * calibs,
            "set_descriptors": 1, "eval_results": 1, "dbt": 1, "findings_report": 1}


@pytest.mark.parametrize("name", ["ci", "default", "paper", "quantity"])
def test_partitions_per_asset_match_the_study_file(name):
    assert plan.asset_partitions(load_study(name)) == expected_partitions(name)


def test_documented_totals():
    """README: the default study is 57 runs; paper.yaml: 1,800 compressed models; quantity: 10 sizes x 5 sets x 2."""
    assert sum(stage["runs"] for stage in plan.stage_runs(load_study("default"))) == 57
    assert plan.asset_partitions(load_study("paper"))["compressed_model"] == 1800
    assert plan.asset_partitions(load_study("quantity"))["compressed_model"] == 100


@pytest.mark.parametrize("name", ["ci", "paper"])
def test_stages_mirror_the_dagster_jobs(name):
    from calib_assets.defs.jobs import stages
    from calib_assets.defs.partitions import StudyPartitions

    study = load_study(name)
    dagster = [(job, assets, len(parts.get_partition_keys()) if parts else 1)
               for job, assets, parts in stages(StudyPartitions.from_study(study))]
    ours = [(s["stage"], s["assets"], s["runs"]) for s in plan.stage_runs(study)]
    assert ours == dagster


def brute_force_makespan(durations, workers):
    best = math.inf
    for assignment in itertools.product(range(workers), repeat=len(durations)):
        loads = [0.0] * workers
        for duration, worker in zip(durations, assignment):
            loads[worker] += duration
        best = min(best, max(loads))
    return best


def test_makespan_against_the_optimum_and_its_bounds():
    rng = random.Random(0)
    for _ in range(60):
        durations = [rng.choice([1, 2, 3, 5, 8]) * rng.random() for _ in range(rng.randint(1, 7))]
        workers = rng.randint(1, 4)
        ours, best, total = plan.makespan(durations, workers), brute_force_makespan(durations, workers), sum(durations)
        assert best - 1e-9 <= ours <= (4 / 3 - 1 / (3 * workers)) * best + 1e-9  # Graham's bound for LPT
        assert total / workers - 1e-9 <= ours <= total / workers + max(durations) + 1e-9
    assert plan.makespan([3, 3, 2, 2, 2], 2) == 7 == 7 / 6 * brute_force_makespan([3, 3, 2, 2, 2], 2)  # bound is tight
    assert plan.makespan([4.0, 1.0, 2.5], 1) == 7.5
    assert plan.makespan([4.0, 1.0, 2.5], 10) == 4.0
    assert plan.makespan([0.0], 3) == 0.0


def test_parameter_counts_match_transformers():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def count(**config):
        with torch.device("meta"):
            return sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**config)).parameters())

    tiny = load_study("ci").models[0]
    assert plan.model_parameters(load_study("ci")) == {"tiny-llama": count(
        vocab_size=257, hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers, num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads, tie_word_embeddings=False)}
    smol = plan.EMBEDDED_ARCHITECTURES["smollm2-135m"]
    assert plan.model_parameters(load_study("default"))["smollm2-135m"] == count(
        vocab_size=smol["vocab"], hidden_size=smol["hidden"], intermediate_size=smol["intermediate"],
        num_hidden_layers=smol["layers"], num_attention_heads=smol["heads"], num_key_value_heads=smol["kv_heads"],
        tie_word_embeddings=True) == 134_515_008
    assert plan.model_parameters(load_study("paper"))["opt-30b"] == 30.0e9
    assert plan.model_parameters(load_study("paper"), {"facebook/opt-30b": 3e10 + 1})["opt-30b"] == 3e10 + 1


def costs_with(per_token: float = 0.0, per_parameter: float = 0.0, evaluation: float = 0.0) -> dict:
    costs = plan.load_costs()
    compression = {m: {**e, "per_token": {"value": per_token}, "per_parameter": {"value": per_parameter}}
                   for m, e in costs["compression"].items()}
    return {**costs, "compression": compression,
            "evaluation": {k: {**e, "value": evaluation} for k, e in costs["evaluation"].items()}}


@pytest.mark.parametrize("name", ["default", "paper"])
def test_compression_cost_is_per_token_and_per_parameter(name):
    raw = yaml.safe_load((STUDIES_DIR / f"{name}.yaml").read_text())
    study = load_study(name)
    calibrated = sum(m["method"] not in CALIBRATION_FREE for m in raw["methods"])
    free = len(raw["methods"]) - calibrated
    sets = len(raw["sources"]) * len(raw["calibration"]["seeds"])
    tokens = raw["calibration"]["n_samples"] * raw["calibration"]["seq_len"] * sets
    parameters = sum(plan.model_parameters(study).values())
    costs = costs_with(per_token=1e-12, per_parameter=1e-9)
    seconds = plan.partition_seconds(study, costs, plan.model_parameters(study))["compress_and_evaluate"]
    assert sum(seconds) == pytest.approx((1e-12 * tokens + 1e-9 * sets) * parameters * calibrated)
    result = plan.build_plan(study, gpus=1, gpu_tflops=100.0, costs=costs)
    ratio = costs["cpu_matmul_tflops"]["value"] / 100.0
    assert result["gpu_hours"] * 3600 == pytest.approx(ratio * (sum(seconds) + 1e-9 * parameters * free))
    assert plan.build_plan(study, gpu_tflops=50.0, costs=costs)["gpu_hours"] == pytest.approx(2 * result["gpu_hours"])


@pytest.mark.parametrize("gpus", [1, 3, 8, 5000])
def test_wall_time_respects_stage_barriers_and_bounds(gpus):
    result = plan.build_plan(load_study("paper"), gpus=gpus)
    for stage in result["stages"]:
        total, longest = stage["gpu_seconds"], stage["longest_partition_seconds"]
        assert total / gpus - 1e-6 <= stage["wall_seconds"] <= total / gpus + longest + 1e-6
        if gpus == 1:
            assert stage["wall_seconds"] == pytest.approx(total)
        if gpus >= stage["runs"]:
            assert stage["wall_seconds"] == pytest.approx(longest)
    assert result["wall_hours"] == pytest.approx(sum(s["wall_seconds"] for s in result["stages"]) / 3600)


def test_evaluation_counts_the_study_settings():
    tokens, notes = plan.evaluation_tokens(load_study("ci"), plan.load_costs(), with_kl=True)
    assert tokens["perplexity"] == 1 * 1024 and tokens["kl"] == 256  # one source, max_tokens, kl_tokens
    assert tokens["task"] > 0
    tokens, notes = plan.evaluation_tokens(load_study("paper"), plan.load_costs(), with_kl=True)
    assert tokens["perplexity"] == 400000 and tokens["kl"] == 16384  # KL on its one (extra) dataset
    assert any("ASSUMED" in note for note in notes)
    examples, choices, per_request = zip(*(plan.LM_EVAL_TASKS[t["name"]] for t in yaml.safe_load(
        (STUDIES_DIR / "paper.yaml").read_text())["evaluation"]["tasks"]))
    assert tokens["task"] == sum(e * c * t for e, c, t in zip(examples, choices, per_request))


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    root = tmp_path / "root"
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(root))
    monkeypatch.setenv("CALIB_ASSETS_STUDY", "default")

    def run(*args: str):
        code = main(list(args))
        captured = capsys.readouterr()
        assert not root.exists()  # plan creates and claims nothing in the artifact root
        return code, captured.out, captured.err

    return run


def test_cli_prints_the_plan_and_json(cli):
    code, out, _ = cli("--study", "paper", "plan", "--gpus", "8")
    assert code == 0
    assert "compress_and_evaluate" in out and "wall time on 8 GPU(s)" in out and "DERIVED" in out
    assert "compressed_model" in out and "1800" in out
    code, out, _ = cli("--study", "ci", "plan", "--json", "--gpus", "2", "--gpu-tflops", "500")
    data = json.loads(out)
    assert code == 0 and data["gpus"] == 2 and data["gpu"]["tflops"] == 500 and data["gpu"]["given"]
    assert data["assets"] == expected_partitions("ci")
    assert data["runs"] == sum(s["runs"] for s in data["stages"])


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0"], "--gpus 0 is not allowed; allowed: an integer >= 1"),
    (["--gpus", "-3"], "--gpus -3"),
    (["--gpu-tflops", "0"], "--gpu-tflops 0.0 is not allowed"),
    (["--gpu-tflops", "nan"], "--gpu-tflops nan"),
    (["--params", "llama-7b"], "--params 'llama-7b' is not NAME=COUNT"),
    (["--params", "llama-7b=-1"], "positive parameter count"),
    (["--params", "gpt-5=1e12"], "--params names ['gpt-5'], which are not models of study 'paper'"),
])
def test_bad_plan_options_are_refused(cli, args, message):
    code, out, err = cli("--study", "paper", "plan", *args)
    assert code == 2 and message in err and not out


def test_an_unknown_model_id_is_named_with_the_fix(cli, tmp_path):
    study = yaml.safe_load((STUDIES_DIR / "ci.yaml").read_text())
    study["models"] = [{"kind": "hub", "name": "mystery", "id": "acme/mystery-7b"}]
    path = tmp_path / "mystery.yaml"
    path.write_text(yaml.safe_dump(study))
    code, _, err = cli("--study", str(path), "plan")
    assert code == 2 and "'acme/mystery-7b'" in err and "--params mystery=COUNT" in err
    code, out, _ = cli("--study", str(path), "plan", "--params", "acme/mystery-7b=7e9", "--json")
    assert code == 0 and json.loads(out)["parameters"] == {"mystery": 7e9}


def test_plan_ignores_an_artifact_root_of_another_study(capsys, monkeypatch, tmp_path):
    from calib_assets.artifacts import STUDY_FILE, check_root_study

    check_root_study(tmp_path, "default", claim=True)
    claim = (tmp_path / STUDY_FILE).read_text()
    monkeypatch.setenv("CALIB_ASSETS_STUDY", "paper")
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(tmp_path))  # restored afterwards: main() sets it from --root
    assert main(["--root", str(tmp_path), "plan"]) == 0
    assert "compress_and_evaluate" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [STUDY_FILE] and (tmp_path / STUDY_FILE).read_text() == claim
