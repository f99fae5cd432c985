"""Which runs `calib-assets run` takes for its own when it recovers from a killed process."""

import socket
import subprocess
import sys

from dagster._core.storage.tags import PARENT_RUN_ID_TAG

from calib_assets.recovery import HOST_TAG, PID_TAG, STARTED_TAG, owner_is_gone, process_tags


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_whose_process_ended_is_taken_for_lost():
    tags = {PID_TAG: str(_dead_pid()), HOST_TAG: socket.gethostname(), STARTED_TAG: ""}
    assert owner_is_gone(tags)


def test_a_live_process_and_a_re_execution_are_not():
    assert not owner_is_gone(process_tags())  # this very process
    # a run re-executed from the UI copies its parent's tags, the ended process among them; its own
    # process is the launcher's, which the daemon's run monitoring watches
    copied = {PID_TAG: str(_dead_pid()), HOST_TAG: socket.gethostname(), STARTED_TAG: "", PARENT_RUN_ID_TAG: "abc"}
    assert not owner_is_gone(copied)
    assert not owner_is_gone({PID_TAG: str(_dead_pid()), HOST_TAG: "another-host"})
