"""A throwaway local Ray cluster for tests and benchmarks: `ray start --head` on 127.0.0.1 with logical GPUs,
every port its own, in a temporary directory of its own; stopped (its processes and theirs) on exit, however
the block ends, without touching any other Ray cluster of this machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_ray_cluster(num_gpus: int = 2, num_cpus: int = 2, object_store_mb: int = 80) -> Iterator[str]:
    """Yield the cluster's address (HOST:PORT of its head)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix socket paths live under it
    port = free_port()
    ports = {flag: free_port() for flag in ("--dashboard-port", "--ray-client-server-port", "--node-manager-port",
                                            "--object-manager-port", "--dashboard-agent-listen-port",
                                            "--dashboard-agent-grpc-port", "--metrics-export-port",
                                            "--runtime-env-agent-port")}
    command = [str(RAY), "start", "--head", f"--num-gpus={num_gpus}", f"--num-cpus={num_cpus}",
               f"--object-store-memory={object_store_mb * 10**6}", "--node-ip-address=127.0.0.1", f"--port={port}",
               "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={temp}",
               "--disable-usage-stats", *[f"{flag}={value}" for flag, value in ports.items()]]
    try:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        yield f"127.0.0.1:{port}"
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_cluster(temp: str) -> None:
    """SIGKILL every process of the cluster whose temporary directory is `temp`, with all their children
    (the steps a Ray job started)."""
    import psutil

    members = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp in part for part in process.info["cmdline"] or []):
                members += [process, *process.children(recursive=True)]
    for process in members:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(members, timeout=30)
