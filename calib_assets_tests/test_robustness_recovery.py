"""Issue 21's reliability matrix, killed runs: `calib-assets run` killed with SIGKILL while a step holds
its `gpu` pool slot, then run again; Ctrl-C during a run; two runs on one root; temporaries of dead
processes. Real processes on the `ci` study, in a temporary Dagster home and artifact root."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calib_assets.artifacts import hold_root, stale_temporaries, temporary_prefix

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "calib_assets.cli", "--study", "ci"]
pytestmark = pytest.mark.xdist_group("killed-runs")


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
    lines, deadline = [], time.monotonic() + timeout_s
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


def test_a_second_run_on_a_root_in_use_is_refused(home_and_root):
    home, root, env = home_and_root
    with hold_root(root, "ci"):
        result = subprocess.run([*CLI, "run"], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"artifact root {root} is in use by another `calib-assets run` (pid {os.getpid()}" in result.stderr
    assert "study 'ci'" in result.stderr
    assert not (root / "models").exists()  # refused before any work


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
