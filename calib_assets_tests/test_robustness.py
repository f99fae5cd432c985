"""Issue 21's reliability matrix, one row per case: what a careful user tried, what happened before, what
happens now, and the test that reproduces it. Real processes, real DuckDB files, the real CLI, on the `ci`
study or a copy of it.

| # | case | before | now | test |
| - | ---- | ------ | --- | ---- |
| 1 | `kill -9` of a run while a step holds the `gpu` slot, then run again | next run hung, ignored SIGTERM/SIGINT | dead run failed, slot freed, `recovered:` lines; Ctrl-C exits 130 at once | test_a_run_killed_in_a_gpu_step_no_longer_wedges_the_next |
| 1 | temporaries of dead steps (`.report.tmp-*`) | left for good | removed on the next run, live and foreign ones kept | test_stale_temporaries_are_those_of_ended_processes_only |
| 1 | two runs on one root | overwrote each other | the second is refused, naming the holder | test_a_second_run_on_a_root_in_use_is_refused |
| 2 | `export-model --force` into a folder with a user's file | folder deleted | refused, nothing touched | test_force_never_deletes_a_folder_with_a_users_files |
| 2 | `--out` = the artifact root, a folder above it or inside it | root deleted (16 MB to 456 KB) | refused | test_the_artifact_root_is_never_an_export_target |
| 2 | `--out .`, an earlier export, an unwritable `--out` | crash / "overwrite=True" / found after loading | clear errors, `--force` replaces only an export, checked first | test_out_dot_is_refused_clearly_and_a_relative_folder_works, test_an_earlier_export_is_replaced_only_with_force, test_an_unwritable_out_is_refused_before_the_model_is_loaded, test_export_calibration_leaves_a_users_files_alone |
| 3 | a flipped byte in a checkpoint | reused silently; `run` failed forever | named by `verify` and `lineage`, rebuilt by the next run | test_a_flipped_byte_in_a_checkpoint_is_found_and_rebuilt |
| 3 | an edited `samples.jsonl` | exported as the calibration data | found, never exported, rebuilt; fingerprint covers the text | test_an_edited_samples_jsonl_is_found_and_never_exported, test_the_fingerprint_covers_the_text_even_with_a_new_seal |
| 3 | truncated corpus, broken manifest, damaged tokens of the second set | wrong file or partition named | file and partition named | test_damage_is_named_with_its_file_and_partition |
| 3 | a corrupt model cache | used | rebuilt, same weights | test_a_corrupt_model_cache_is_rebuilt_with_the_same_weights |
| 4 | two model specs under one name | one cache, lineage of the other | a cache folder per spec | test_two_specs_under_one_name_get_their_own_model_cache |
| 4 | seq_len beyond the context; kl_tokens / max_tokens below seq_len | ran; KL failed on array shapes | refused at load (hub/local: before the base model is recorded) | test_windows_longer_than_the_model_or_the_text_are_refused_at_load, test_a_hub_or_local_models_context_is_checked_before_the_base_model_is_recorded |
| 4 | random bytes in a local `.txt` | decoded as cp1252, used | refused by file; a declared `encoding` is honoured | test_text_that_is_not_in_the_declared_encoding_is_refused_by_file, test_a_declared_encoding_is_used_and_binary_files_are_refused |
| 4 | an unknown lm_eval task; unknown keys | found 27 s in; raw pydantic text | refused at load; the key, where, and the allowed keys | test_an_unknown_lm_eval_task_is_refused_at_load, test_unknown_keys_are_listed_with_the_allowed_ones |
| 5 | a reader holding the warehouse while a run writes, and the reverse | raw `_duckdb.IOException`, failed run | bounded wait, then one line naming the file and process | test_a_reader_waits_for_a_writer_then_reads, test_a_writer_waits_for_a_reader, test_a_writer_that_holds_on_gives_a_clear_error_naming_it, test_findings_on_a_held_warehouse_prints_one_line |
| 5 | a second study on the same root, from the CLI or the UI | overwrote tasks, baselines, warehouse, report | refused before any work | test_a_second_study_on_a_root_is_refused_before_any_work, test_a_ui_run_of_another_study_on_the_root_fails_its_first_step |
| 6 | a step that fails after validation | 60-190 lines of trace | one line with the log path | test_a_failed_step_gives_one_line_and_the_trace_goes_to_the_log |
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest

from calib_assets import steps
from calib_assets.artifacts import CorruptArtifact, hold_root, stale_temporaries, temporary_prefix, verify_contents
from calib_assets.calibration import load_calibration_set
from calib_assets.cli import main as cli_main
from calib_assets.compression import load_checkpoint
from calib_assets.defs import build_definitions
from calib_assets.lineage import LineageError, export_calibration, trace
from calib_assets.models import RandomLlama, cache_folder_name, prepare_model_folder
from calib_assets.runner import run_study
from calib_assets.sources import parse_source_spec
from calib_assets.sources.local import iter_local
from calib_assets.study import Study, StudyError, load_study
from calib_assets.warehouse import WarehouseBusy, connect


def _marked(*marks):
    def apply(test):
        for mark in marks:
            test = mark(test)
        return test
    return apply


KILLED_RUNS = pytest.mark.xdist_group("killed-runs")  # real `calib-assets run` processes in their own home
PIPELINE = _marked(pytest.mark.integration, pytest.mark.xdist_group("pipeline"))  # the materialized ci study


# -- 1. Killed runs: SIGKILL while a step holds its slot, Ctrl-C, two runs or two studies on one root,
# temporaries of dead processes.
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "calib_assets.cli", "--study", "ci"]


@pytest.fixture
def home_and_root(tmp_path):
    home, root = tmp_path / "dagster_home", tmp_path / "artifacts"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "CALIB_ASSETS_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    return home, root, env


def start_run(env) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)


def live_runs_and_slots(home: Path):
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    from calib_assets.recovery import LIVE_STATUSES

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        runs = instance.get_run_records(dg.RunsFilter(statuses=LIVE_STATUSES))
        return [r.dagster_run for r in runs], instance.event_log_storage.get_concurrency_run_ids()


def kill_while_a_slot_is_held(process: subprocess.Popen, home: Path, timeout_s: float) -> None:
    """SIGKILL `process` as soon as one of its steps holds a pool slot: polled on one open instance, so
    the kill follows within milliseconds (a tiny model's step holds its slot for about a second)."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        wait_for(instance.event_log_storage.get_concurrency_run_ids, timeout_s, "a step holding a pool slot")
        process.kill()
    process.wait()


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def read_until(process: subprocess.Popen, marker, timeout_s: float) -> list[str]:
    """Lines of the process's output up to the first that `marker` accepts (fails on timeout or exit)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None  # started with stdout=PIPE
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError("the run ended before the expected line:\n" + "".join(lines))
        lines.append(line)
        if marker(line):
            return lines
    raise AssertionError(f"no expected line within {timeout_s}s:\n" + "".join(lines))


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@KILLED_RUNS
def test_a_run_killed_in_a_gpu_step_no_longer_wedges_the_next(home_and_root):
    home, root, env = home_and_root
    first = start_run(env)
    try:
        # reproduce: SIGKILL while a step holds its pool slot leaves a STARTED run holding the slot
        kill_while_a_slot_is_held(first, home, 240)
    finally:
        first.kill()
    runs, slots = live_runs_and_slots(home)
    assert len(runs) == 1 and runs[0].run_id in slots

    # a step killed in its write leaves a temporary; so did, say, a report writer on another host
    host = socket.gethostname()
    dead = root / f".report.tmp-{dead_pid()}@{host}.abcd1234"
    alive = root / f"{temporary_prefix('report')}efgh5678"  # this test's own process: alive
    elsewhere = root / f".report.tmp-{dead_pid()}@another-host.ijkl9012"
    users = root / "notes.tmp-mine"
    for folder in (dead, alive, elsewhere):
        folder.mkdir(parents=True)
    users.write_text("mine")

    second = start_run(env)
    try:
        lines = read_until(second, lambda line: line.startswith("[") and " compress_and_evaluate " in line, 300)
        text = "".join(lines)
        assert f"recovered: run {runs[0].run_id[:8]}" in text and "lost its process" in text
        assert "removed 1 temporary folder(s)" in text and dead.name in text
        assert not dead.exists() and alive.exists() and elsewhere.exists() and users.read_text() == "mine"

        # Ctrl-C stops it promptly, and the run it interrupted does not stay STARTED
        time.sleep(0.3)
        interrupted_at = time.monotonic()
        second.send_signal(signal.SIGINT)
        rest = second.communicate(timeout=30)[0]
        assert time.monotonic() - interrupted_at < 10
        assert second.returncode == 130, rest
        assert "interrupted" in rest
    finally:
        second.kill()
    runs, slots = live_runs_and_slots(home)
    assert runs == [] and not slots


@KILLED_RUNS
def test_a_second_run_on_a_root_in_use_is_refused(home_and_root):
    home, root, env = home_and_root
    with hold_root(root, "ci"):
        result = subprocess.run([*CLI, "run"], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"artifact root {root} is in use by another `calib-assets run` (pid {os.getpid()}" in result.stderr
    assert "study 'ci'" in result.stderr
    assert not (root / "models").exists()  # refused before any work


@KILLED_RUNS
def test_stale_temporaries_are_those_of_ended_processes_only(tmp_path):
    host = socket.gethostname()
    ended = tmp_path / "a" / f".tokens.npy.tmp-{dead_pid()}@{host}."  # a file's temporary (no random part)
    replaced = tmp_path / f".report.old-{dead_pid()}@{host}."
    mine = tmp_path / f"{temporary_prefix('checkpoint')}abcdefgh"
    legacy_old, legacy_new = tmp_path / ".report.tmp-k2j4h6g8", tmp_path / ".index.tmp-a1b2c3d4"
    lookalike = tmp_path / ".report.tmp-notapid@host.x"
    ended.parent.mkdir()
    ended.write_text("partial")
    for folder in (replaced, mine, legacy_old, legacy_new, lookalike):
        folder.mkdir()
    (replaced / f".inside.tmp-{dead_pid()}@{host}.").mkdir()  # inside a stale folder: removed with it, not listed twice
    day_ago = time.time() - 24 * 3600
    os.utime(legacy_old, (day_ago, day_ago))
    assert sorted(stale_temporaries(tmp_path)) == sorted([ended, replaced, legacy_old])


@KILLED_RUNS
def test_a_second_study_on_a_root_is_refused_before_any_work(home_and_root):
    """Two studies in one root used to overwrite each other's tasks, baselines, warehouse and report."""
    _, root, env = home_and_root
    root.mkdir()
    (root / "study.json").write_text('{"study": "default"}')
    before = sorted(p.name for p in root.iterdir())
    for command in (["run"], ["findings"], ["verify"]):
        result = subprocess.run([*CLI, *command], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (f"error: artifact root {root} holds study 'default'; give study 'ci' a root of its "
                                 "own (--root DIR, or CALIB_ASSETS_ROOT)\n")
    assert sorted(p.name for p in root.iterdir()) == before


@KILLED_RUNS
def test_a_ui_run_of_another_study_on_the_root_fails_its_first_step(tmp_path):
    import dagster as dg

    from calib_assets.defs import build_definitions
    from calib_assets.defs.jobs import stages
    from calib_assets.defs.partitions import StudyPartitions
    from calib_assets.study import load_study

    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "study.json").write_text('{"study": "default"}')
    study = load_study("ci")
    defs = build_definitions(study, root=str(root))
    job_name, _, partitions = stages(StudyPartitions.from_study(study))[0]
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partitions.get_partition_keys()[0], raise_on_error=False)
    assert not result.success
    assert sorted(p.name for p in root.iterdir()) == ["study.json"]


# -- 2. Safe exports: the CLI on the materialized `ci` study.
@pytest.fixture
def export(materialized, monkeypatch, capsys):
    study, _, root, _, _ = materialized
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(root))
    target = f"{study.variant_keys[0]}|{study.calib_keys[0]}"

    def run(out, *flags, command="export-model"):
        args = [target] if command == "export-model" else [study.models[0].name, study.calib_keys[0]]
        code = cli_main(["--study", study.name, command, *args, "--out", str(out), *flags])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run, root


def snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@PIPELINE
def test_force_never_deletes_a_folder_with_a_users_files(export, tmp_path):
    run, _ = export
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = run(out, "--force")
    assert code == 2 and "holds files calib-assets did not write (thesis.tex)" in err
    assert (out / "thesis.tex").read_text() == "years of work" and len(list(out.iterdir())) == 1


@PIPELINE
@pytest.mark.parametrize("where", ["the artifact root", "a folder holding it", "a folder inside it"])
@pytest.mark.parametrize("command", ["export-model", "export-calibration"])
def test_the_artifact_root_is_never_an_export_target(export, where, command):
    run, root = export
    out = {"the artifact root": root, "a folder holding it": root.parent,
           "a folder inside it": root / "checkpoints"}[where]
    before = snapshot(root)
    code, _, err = run(out, "--force", command=command)
    assert code == 2 and "which calib-assets keeps" in err
    assert snapshot(root) == before


@PIPELINE
def test_out_dot_is_refused_clearly_and_a_relative_folder_works(export, tmp_path, monkeypatch):
    """The export replaces its folder as a whole, so it cannot be the folder the user stands in (this used
    to fail with "PosixPath('.') has an empty name")."""
    run, _ = export
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = run(".")
    assert code == 2 and f"--out '{here}' is or holds the current folder" in err and "--out ./exported" in err
    code, out, err = run("exported")
    assert code == 0, err
    assert (here / "exported" / "config.json").is_file() and str(here / "exported") in out


@PIPELINE
def test_an_earlier_export_is_replaced_only_with_force(export, tmp_path):
    run, _ = export
    out = tmp_path / "hf"
    assert run(out)[0] == 0
    code, _, err = run(out)
    assert code == 2 and "holds an earlier export; pass --force to replace it" in err and "overwrite" not in err
    assert run(out, "--force")[0] == 0
    (out / "my-notes.md").write_text("notes")
    code, _, err = run(out, "--force")
    assert code == 2 and "my-notes.md" in err and (out / "my-notes.md").read_text() == "notes"


@PIPELINE
def test_an_unwritable_out_is_refused_before_the_model_is_loaded(export, tmp_path, monkeypatch):
    import calib_assets.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(calib_assets.models, "load_model", no_loading)
    run, _ = export
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(blocker / "hf")
    assert code == 2 and "cannot be created" in err and "is a file" in err
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs another user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(locked / "hf")
        assert code == 2 and "cannot be written" in err


@PIPELINE
def test_export_calibration_leaves_a_users_files_alone(export, tmp_path):
    run, _ = export
    out = tmp_path / "release"
    out.mkdir()
    (out / "README.md").write_text("about this data")
    assert run(out, command="export-calibration")[0] == 2
    assert run(out, "--force", command="export-calibration")[0] == 0
    assert (out / "README.md").read_text() == "about this data" and (out / "samples.jsonl").is_file()


# -- 3. Corrupt artifacts, on a copy of the materialized `ci` study: each is found, named with its file
# and partition, and rebuilt by a run; nothing else changes.
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


@PIPELINE
def test_a_flipped_byte_in_a_checkpoint_is_found_and_rebuilt(copy, monkeypatch, capsys):
    study, root = copy
    variant, calib = study.variant_keys[0], study.calib_keys[0]
    directory = steps.checkpoint_dir(root, variant, calib)
    tensors = directory / "tensors.safetensors"
    original = tensors.read_bytes()
    flip_byte(tensors)

    code, out = verify_lines(study, root, monkeypatch, capsys)
    assert code == 1 and f"compressed_model [{calib}|{variant}]: {tensors} was changed" in out
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


@PIPELINE
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
    assert code == 1 and f"calibration_set [{calib}|{model}]: {samples}" in out
    with pytest.raises(CorruptArtifact, match="samples.jsonl"):
        load_calibration_set(directory)
    with pytest.raises((CorruptArtifact, LineageError), match="samples.jsonl"):
        export_calibration(study, root, model, calib, tmp_path / "export")
    assert not (tmp_path / "export").exists()

    lines = []
    rerun(study, root, lines)
    rebuilt = load_calibration_set(directory)
    assert rebuilt.texts[0] != rows[0]["text"] and rebuilt.doc_ids[1] != "someone-else"


@PIPELINE
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


@PIPELINE
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
        asset, partition = "compressed_model", f"{calib}|{variant}"
        path = steps.checkpoint_dir(root, variant, calib) / "manifest.json"
        path.write_text(path.read_text()[:-10])
    else:
        calib = study.calib_keys[1]
        asset, partition = "calibration_set", f"{calib}|{model}"
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


@PIPELINE
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


# -- 4. Wrong inputs, refused before any work, naming the value and what is allowed.
BASE = {
    "name": "t",
    "models": [{"kind": "random", "name": "tiny"}],
    "methods": [{"method": "gptq", "bits": 3, "group_size": 32}],
    "sources": ["bbc-tech"],
    "calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0]},
    "evaluation": {"seq_len": 64},
}


def _study(**changes) -> Study:
    return Study.model_validate({**BASE, **changes})


def test_two_specs_under_one_name_get_their_own_model_cache(tmp_path):
    narrow, wide = RandomLlama(name="tiny", hidden_size=64), RandomLlama(name="tiny", hidden_size=128)
    assert cache_folder_name(narrow) != cache_folder_name(wide)
    folders = [prepare_model_folder(spec, tmp_path) for spec in (narrow, wide, narrow)]
    assert folders[0] == folders[2] != folders[1]
    sizes = [json.loads((folder / "config.json").read_text())["hidden_size"] for folder in folders]
    assert sizes == [64, 128, 64]  # each folder holds the model its spec describes


@pytest.mark.parametrize("changes, message", [
    ({"calibration": {"n_samples": 4, "seq_len": 6000, "seeds": [0]}},
     r"calibration\.seq_len=6000 is longer than the context of model 'tiny' \(4096 tokens\); allowed: 1\.\.4096"),
    ({"evaluation": {"seq_len": 8192}}, r"evaluation\.seq_len=8192 .* allowed: 1\.\.4096"),
    ({"models": ["smollm2-135m"], "methods": [{"method": "gptq", "bits": 3, "group_size": 64}],
      "evaluation": {"seq_len": 9000, "max_tokens": 20000}}, r"'smollm2-135m' \(8192 tokens\)"),
    ({"evaluation": {"seq_len": 512, "kl_tokens": 100}},
     r"evaluation\.kl_tokens=100 .* allowed: 0 \(no KL\) or at least 512"),
    ({"evaluation": {"seq_len": 512, "max_tokens": 300}}, r"evaluation\.max_tokens=300 .* at least 512"),
])
def test_windows_longer_than_the_model_or_the_text_are_refused_at_load(changes, message):
    with pytest.raises(ValueError, match=message):
        _study(**changes)


def test_a_hub_or_local_models_context_is_checked_before_the_base_model_is_recorded(tiny_model_folder, tmp_path):
    folder = tmp_path / "short-context"
    shutil.copytree(tiny_model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    study = _study(models=[{"kind": "local", "name": "mine", "path": str(folder)}], evaluation={"seq_len": 256})
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=r"evaluation\.seq_len=256 is longer than the context of model 'mine' "
                                         r"\(128 tokens\)"):
        steps.materialize_base_model(study, "mine", root)
    assert not steps.model_dir(root, "mine").exists()
    fits = _study(models=[{"kind": "local", "name": "mine", "path": str(folder)}], evaluation={"seq_len": 128})
    assert steps.materialize_base_model(fits, "mine", root)["model"] == "mine"


def _local_source(folder, **options):
    return parse_source_spec({"kind": "local", "label": "mine", "path": str(folder), **options})


def test_text_that_is_not_in_the_declared_encoding_is_refused_by_file(tmp_path):
    (tmp_path / "good.txt").write_text("A plain UTF-8 document, with an é.", encoding="utf-8")
    (tmp_path / "noise.txt").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match=r"noise\.txt' is not valid utf-8 text \(byte 0: .*`encoding`"):
        list(iter_local(_local_source(tmp_path)))
    (tmp_path / "noise.txt").unlink()
    assert list(iter_local(_local_source(tmp_path))) == [("good.txt", "A plain UTF-8 document, with an é.")]


def test_a_declared_encoding_is_used_and_binary_files_are_refused(tmp_path):
    (tmp_path / "old.txt").write_bytes("£5 and café".encode("cp1252"))
    assert list(iter_local(_local_source(tmp_path, encoding="cp1252"))) == [("old.txt", "£5 and café")]
    (tmp_path / "blob.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match=r"blob\.txt' holds NUL characters"):
        list(iter_local(_local_source(tmp_path, encoding="cp1252")))
    with pytest.raises(ValueError, match=r"unknown encoding 'utf-9'"):
        _local_source(tmp_path, encoding="utf-9")


def test_an_unknown_lm_eval_task_is_refused_at_load():
    assert _study(evaluation={"seq_len": 64, "tasks": [{"kind": "lm_eval", "name": "piqa"}]}).lm_eval_tasks
    with pytest.raises(ValueError, match=r"no task named 'piqaa'; the paper's tasks: \[.*'piqa'"):
        _study(evaluation={"seq_len": 64, "tasks": [{"kind": "lm_eval", "name": "piqaa"}]})


@pytest.mark.parametrize("changes, line", [
    ({"modles": []}, "- unknown key 'modles' in the study; allowed: ['calibration', 'compute', 'description', "
                     "'evaluation', 'methods', 'models', 'name', 'sources']"),
    ({"calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0], "sampler": "x"}},
     "- unknown key 'sampler' in calibration; allowed: ['descriptors', 'heldout_fraction', 'n_samples', "
     "'sampler_seed', 'sampling', 'seeds', 'selection', 'seq_len']"),
    ({"evaluation": {"tasks": [{"kind": "lm_eval", "name": "piqa", "limit": 3}]}},
     "- unknown key 'limit' in evaluation.tasks[0].lm_eval; allowed: ['data_files', 'kind', 'name']"),
    ({"models": [{"kind": "random", "name": "tiny", "hidden": 3}]},
     "- unknown key 'hidden' in models.random; allowed: ['hidden_size', 'intermediate_size', 'kind', 'name', "
     "'num_attention_heads', 'num_hidden_layers', 'num_key_value_heads', 'seed']"),
])
def test_unknown_keys_are_listed_with_the_allowed_ones(changes, line, tmp_path):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    with pytest.raises(StudyError) as error:
        load_study(str(path))
    message = str(error.value)
    assert line in message.splitlines() and "pydantic" not in message


# -- 5-6. Concurrent readers and writers of the warehouse (real processes hold the DuckDB file), and a
# failed step's one-line error.
HOLD = textwrap.dedent("""
    import sys, time, duckdb
    connection = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read")
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
    connection.close()
""")


def hold(path, mode: str, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode, str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("create table eval_results as select 1 as value")
    return path


def test_a_reader_waits_for_a_writer_then_reads(warehouse):
    holder = hold(warehouse, "write", 2.0)
    started = time.monotonic()
    with connect(warehouse, read_only=True, wait_s=30) as connection:
        assert connection.execute("select value from eval_results").fetchone() == (1,)
    assert time.monotonic() - started >= 1.0  # it waited for the lock, not a snapshot or a crash
    holder.wait()


def test_a_writer_waits_for_a_reader(warehouse):
    holder = hold(warehouse, "read", 2.0)
    with connect(warehouse, read_only=False, wait_s=30) as connection:
        connection.execute("insert into eval_results values (2)")
    holder.wait()
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        assert connection.execute("select count(*) from eval_results").fetchone() == (2,)


def test_a_writer_that_holds_on_gives_a_clear_error_naming_it(warehouse):
    holder = hold(warehouse, "write", 30.0)
    try:
        with pytest.raises(WarehouseBusy) as error:
            with connect(warehouse, read_only=True, wait_s=1.0):
                pass
        message = str(error.value)
        assert str(warehouse) in message and f"process {holder.pid}" in message and "waited 1 s" in message
        assert "IOException" not in message
    finally:
        holder.kill()


def test_findings_on_a_held_warehouse_prints_one_line(warehouse):
    """`calib-assets findings` as a user runs it (waiting 1 s, not 60), while another process writes the
    warehouse."""
    root = warehouse.parent
    holder = hold(warehouse, "write", 30.0)
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import sys, calib_assets.warehouse as w; w.LOCK_WAIT_S = 1.0; "
             "from calib_assets.cli import main; sys.exit(main(['--study', 'ci', '--root', sys.argv[1], 'findings']))",
             str(root)], capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: the warehouse") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_failed_step_gives_one_line_and_the_trace_goes_to_the_log(tmp_path, monkeypatch, capsys):
    """Failures after validation used to print 60-190 lines of Dagster stack trace to the terminal."""
    import dagster as dg

    from calib_assets import steps
    from calib_assets.defs import build_definitions
    from calib_assets.runner import StudyRunFailed, run_study
    from calib_assets.study import load_study

    def broken(*args, **kwargs):
        raise RuntimeError("the corpus server is down\nretry later, or check the source spec")

    monkeypatch.setattr(steps, "materialize_corpus", broken)
    study, log = load_study("ci"), tmp_path / "steps.log"
    lines = []
    with dg.instance_for_test() as instance, pytest.raises(StudyRunFailed) as error:
        run_study(build_definitions(study, root=str(tmp_path / "root")), study, instance, echo=lines.append,
                  log_path=log)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"prepare_corpora [{study.source_names[0]}] failed in step text_corpus: RuntimeError: "
                              "the corpus server is down (...)")
    assert f"full trace: {log}" in message
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "retry later" not in captured.err
    assert "in broken" in log.read_text() and "retry later" in log.read_text()  # the stack trace, in full
