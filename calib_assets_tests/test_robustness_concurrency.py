"""Issue 21's reliability matrix, concurrent readers and writers of the warehouse: a reader used to crash
with a raw `_duckdb.IOException`, and a run's writer with "Could not set lock on file". Real processes hold
the DuckDB file while this one reads or writes."""

import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from calib_assets.warehouse import WarehouseBusy, connect

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
    assert holder.stdout.readline().strip() == "holding"
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
