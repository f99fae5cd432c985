"""A throwaway local PostgreSQL server for tests: `initdb` into a fresh temporary directory, listening on
127.0.0.1 only, at a free port, with its unix socket inside that directory and trust authentication; one
database created. Stopped (`pg_ctl stop -m immediate`, then SIGKILL if need be) and its directory removed
on exit, however the block ends, without touching any other server of this machine.

Uses the highest Debian/Ubuntu PostgreSQL in /usr/lib/postgresql/*/bin (`apt-get install postgresql`).
As root (PostgreSQL refuses to run as root) the directory belongs to the `postgres` user and every server
command runs through `runuser -u postgres --`; otherwise they run as the current user."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from calib_assets_tests.ray_cluster import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"
OS_USER = "postgres"  # who runs the server when we are root


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or no `postgres` user to run them as root): skip, don't fail."""


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db: str
    directory: Path  # the temporary directory: data/, the socket, the server log

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.db}"

    def env(self) -> dict[str, str]:
        """The variables that deploy/cluster/dagster.yaml reads."""
        return {"DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": self.db}

    def connect(self):
        """A psycopg2 connection to the database (the caller closes it)."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=self.db)


def find_bin_dir() -> Path:
    """The bin folder of the highest PostgreSQL version installed, or PostgresUnavailable."""
    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.name)) or (0,)

    found = [path for path in glob.glob(BIN_GLOB)
             if all(os.access(Path(path) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))]
    if not found:
        raise PostgresUnavailable(f"no PostgreSQL server binaries in {BIN_GLOB} (apt-get install postgresql)")
    return Path(max(found, key=version))


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresUnavailable(f"running as root, and there is no {OS_USER!r} user to run PostgreSQL as") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, and there is no `runuser` to run PostgreSQL as another user")
    return [runuser, "-u", OS_USER, "--"]


@contextlib.contextmanager
def postgres_server(db: str = "dagster", user: str = "dagster", password: str = "dagster",
                    start_timeout_s: int = 60) -> Iterator[PostgresServer]:
    """Yield a running server with database `db`, owned by superuser `user`."""
    bin_dir = find_bin_dir()
    prefix = _as_server_user()
    temp = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # short: the unix socket's path lives under it
    data, log = temp / "data", temp / "server.log"

    def run(*command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        # cwd: the server user must be able to enter it (it cannot enter root's working directory)
        return subprocess.run([*prefix, *command], cwd=temp, capture_output=True, text=True, check=check,
                              timeout=timeout, env={**os.environ, "LC_ALL": "C", "LANG": "C"})

    try:
        (temp / "pwfile").write_text(password + "\n")
        if prefix:
            entry = pwd.getpwnam(OS_USER)
            os.chown(temp, entry.pw_uid, entry.pw_gid)
            os.chown(temp / "pwfile", entry.pw_uid, entry.pw_gid)
        try:
            run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={temp / 'pwfile'}",
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"initdb failed:\n{error.stdout}{error.stderr}") from None
        for attempt in range(3):  # the port may be taken between free_port() and the server's bind
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {temp} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            started = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                          "-t", str(start_timeout_s), "start", check=False, timeout=start_timeout_s + 30)
            if started.returncode == 0:
                break
            _stop(run, bin_dir, data)
            text = log.read_text(errors="replace") if log.exists() else ""
            if "could not bind" not in text or attempt == 2:
                raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}{started.stderr}\n{text[-4000:]}")
        try:
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db)
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"createdb failed:\n{error.stdout}{error.stderr}") from None
        yield PostgresServer(host="127.0.0.1", port=port, user=user, password=password, db=db, directory=temp)
    finally:
        _stop(run, bin_dir, data)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(run, bin_dir: Path, data: Path) -> None:
    """Stop the server of `data` if one runs: immediate shutdown, then SIGKILL of the postmaster and its
    children (all found by its postmaster.pid, so no other server is touched)."""
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # never started (or its pid file is unreadable: pg_ctl could not stop it either)
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop",
            check=False, timeout=60)
    if pid_file.exists():  # the stop did not finish
        _kill_tree(pid)
    # the postmaster is not our child (pg_ctl daemonizes it): wait until whoever adopted it has reaped it
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_tree(pid: int) -> None:
    try:
        import psutil
    except ImportError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        if "postgres" not in parent.name():  # a stale pid file whose pid was reused
            return
        members = [parent, *parent.children(recursive=True)]
        for process in members:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(members, timeout=30)
