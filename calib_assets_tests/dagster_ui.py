"""`dagster dev` on 127.0.0.1 for tests (started on a free port, stopped with its whole process group however
the block ends), its GraphQL API, and headless Chromium through selenium (Debian's `chromium` and
`chromium-driver`: `apt-get install chromium chromium-driver`; .ci/run installs them)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from calib_assets_tests.ray_cluster import free_port

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WINDOW = (1280, 900)


class BrowserUnavailable(RuntimeError):
    """No Chromium, chromedriver or selenium here: skip, don't fail."""


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """The webserver and daemon of `dagster dev -w workspace.yaml` with `env` added; yields its base URL."""
    port = free_port()
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port),
             "-w", str(REPO / "workspace.yaml")],
            cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dagster dev did not start (exit {process.poll()}); see {log_path}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def graphql(url: str, query: str, **variables) -> dict:
    """The `data` of a GraphQL query to the webserver; raises on GraphQL errors."""
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables})
                                     .encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise AssertionError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    """Poll `predicate` until it returns something truthy (returned); AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """A selenium Chrome driver on Debian's Chromium, headless, WINDOW pixels wide and high."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise BrowserUnavailable(f"selenium is not installed ({error})") from error
    binary = shutil.which("chromium") or CHROMIUM
    driver_binary = shutil.which("chromedriver") or CHROMEDRIVER
    if not (Path(binary).exists() and Path(driver_binary).exists()):
        raise BrowserUnavailable("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    try:
        yield driver
    finally:
        driver.quit()
