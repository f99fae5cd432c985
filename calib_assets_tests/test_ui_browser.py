"""The Dagster UI as users meet it: the CI study run by `calib-assets run` (what `make run` does), then
`dagster dev` over its instance on 127.0.0.1, checked through its GraphQL API and in a real browser
(headless Chromium). Screenshots go to $CALIB_ASSETS_TEST_ARTIFACTS/ui (default: test-artifacts/ui)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

from calib_assets.naming import STUDY_TAG
from calib_assets.recovery import PID_TAG
from calib_assets_tests.dagster_ui import (
    REPO,
    WINDOW,
    BrowserUnavailable,
    dagster_dev,
    graphql,
    headless_chromium,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ui")]

SCREENSHOTS = Path(os.environ.get("CALIB_ASSETS_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
LOCATION, REPOSITORY = "calib_assets", "__repository__"  # workspace.yaml's location, Definitions' repository
GROUPS = ["inputs", "calibration", "compression", "evaluation", "warehouse", "findings"]
CHECKPOINT = "abc-news.s0|tiny-llama.gptq-w3g32"  # a compressed_model / evaluation partition of the CI study
GRAPH_WINDOW = (1920, 2000)
RUN_TIMEOUT_S = 420
PAGE_TIMEOUT_S = 60

RUNS = """{ runsOrError { ... on Runs { results { runId pipelineName status pipelineSnapshotId
  repositoryOrigin { repositoryLocationName repositoryName } tags { key value } } } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { runId status pipelineName tags { key value }
  assetMaterializations { assetKey { path } partition } } } }"""
JOB_SNAPSHOT = """query($job: String!) { pipelineOrError(params: {repositoryLocationName: "calib_assets",
  repositoryName: "__repository__", pipelineName: $job}) { ... on Pipeline { pipelineSnapshotId } } }"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The CI study materialized by the CLI into its own Dagster home, and `dagster dev` serving it."""
    work = tmp_path_factory.mktemp("ui")
    home, root = work / "dagster_home", work / "artifacts"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home), "CALIB_ASSETS_STUDY": "ci", "CALIB_ASSETS_ROOT": str(root)}
    completed = subprocess.run([str(Path(sys.executable).with_name("calib-assets")), "--study", "ci", "--root",
                                str(root), "run"], env={**os.environ, **env}, cwd=REPO, capture_output=True,
                               text=True, timeout=1800)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with dagster_dev(env, work / "dagster-dev.log") as url:
        yield SimpleNamespace(url=url, root=root, home=home, terminal=completed.stdout + completed.stderr)


@pytest.fixture(scope="module")
def browser(ui):
    try:
        with headless_chromium() as driver:
            yield driver
    except BrowserUnavailable as why:
        pytest.skip(str(why))


def _open(driver, url: str, text: str):
    """Load `url`, wait until the page shows `text`, close Dagster's first-visit newsletter dialog."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: text in driver.find_element(By.TAG_NAME, "body").text, PAGE_TIMEOUT_S, f"{text!r} on {url}")
    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        button.click()


def _screenshot(driver, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, path  # a rendered page, not a blank one
    return path


def _tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


def _finished(url: str, run_id: str) -> dict | None:
    run = graphql(url, RUN, id=run_id)["runOrError"]
    return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None


def test_make_run_keeps_its_terminal_to_progress_lines(ui):
    """The code server, lm-eval, transformers and dbt write to the step log, not to the terminal."""
    assert "[ 20/20] findings" in ui.terminal
    for noise in ("dagster.code_server", "it/s]", "Warning", "WARNING", "Traceback"):
        assert noise not in ui.terminal, noise


def test_the_code_location_loads_without_error(ui, browser):
    entries = graphql(ui.url, """{ workspaceOrError { ... on Workspace { locationEntries { name
      locationOrLoadError { __typename ... on PythonError { message } } } } } }""")["workspaceOrError"]
    assert [(entry["name"], entry["locationOrLoadError"]["__typename"]) for entry in entries["locationEntries"]] \
        == [(LOCATION, "RepositoryLocation")]
    _open(browser, f"{ui.url}/locations", LOCATION)
    wait_for(lambda: "Loaded" in browser.page_source, PAGE_TIMEOUT_S, "the location's 'Loaded' status")
    assert "Failed" not in browser.find_element("tag name", "body").text
    _screenshot(browser, "01-code-locations")


def test_every_run_of_make_run_is_the_code_locations_run(ui):
    """What the UI checks before it re-executes a run without warning: the run's origin is a loaded location
    and its job snapshot is that location's (useJobAvailabilityErrorForRun: 'origin-and-snapshot')."""
    runs = [run for run in graphql(ui.url, RUNS)["runsOrError"]["results"] if PID_TAG in _tags(run)]
    assert len(runs) == 20  # the CI study's runs
    snapshots = {job: graphql(ui.url, JOB_SNAPSHOT, job=job)["pipelineOrError"]["pipelineSnapshotId"]
                 for job in {run["pipelineName"] for run in runs}}
    for run in runs:
        assert run["status"] == "SUCCESS"
        assert run["repositoryOrigin"] == {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
        assert run["pipelineSnapshotId"] == snapshots[run["pipelineName"]], run["pipelineName"]
        assert _tags(run)[STUDY_TAG] == "ci"


def test_the_global_asset_graph_shows_every_asset(ui, browser):
    from selenium.webdriver.common.by import By

    assets = graphql(ui.url, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    names = sorted("/".join(node["assetKey"]["path"]) for node in assets)
    expanded = urllib.parse.quote(",".join(f"global@global:{group}" for group in GROUPS))

    def labels():
        shown = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "[class*='AssetNode_assetName']")]
        return shown if len(shown) >= len(names) else None

    browser.set_window_size(*GRAPH_WINDOW)  # the UI draws only the nodes in view: a window the whole graph fits
    try:
        _open(browser, f"{ui.url}/asset-groups?expanded={expanded}", "Global asset lineage")
        shown = wait_for(labels, PAGE_TIMEOUT_S, f"{len(names)} asset nodes")
        _screenshot(browser, "02-global-asset-graph")
    finally:
        browser.set_window_size(*WINDOW)
    cut = [label for label in shown if "…" in label]  # the UI cuts a name too long for its node in the middle
    assert not cut, f"names cut in the global graph: {cut}"
    assert sorted(shown) == names


def test_a_checkpoint_partition_shows_its_metadata_and_links_its_calibration_set(ui, browser):
    from selenium.webdriver.common.by import By

    partition = urllib.parse.quote(CHECKPOINT, safe="")
    _open(browser, f"{ui.url}/assets/compressed_model?view=partitions&partition={partition}", "bits_per_param")
    body = browser.find_element(By.TAG_NAME, "body").text
    for shown in ("size_on_disk_mb", "sparsity", "compress_seconds", "calibration_fingerprint", "gptq-w3g32"):
        assert shown in body, shown
    _screenshot(browser, "03-compressed-model-partition")
    link = browser.find_element(By.CSS_SELECTOR, "a[href*='/assets/calibration_set']")
    link.click()
    if len(browser.window_handles) > 1:  # an external-looking URL opens in a new tab
        browser.switch_to.window(browser.window_handles[-1])
    wait_for(lambda: "calibration_set" in browser.current_url, PAGE_TIMEOUT_S, "the calibration set's page")
    wait_for(lambda: "abc-news.s0|tiny-llama" in browser.find_element(By.TAG_NAME, "body").text, PAGE_TIMEOUT_S,
             "the calibration set's partition")
    wait_for(lambda: "zipf_exponent" in browser.find_element(By.TAG_NAME, "body").text, PAGE_TIMEOUT_S,
             "the calibration set's descriptor table")
    _screenshot(browser, "04-calibration-set-partition")
    if len(browser.window_handles) > 1:
        browser.close()
        browser.switch_to.window(browser.window_handles[0])


def test_a_make_run_evaluation_run_re_executes_from_the_ui_without_warning(ui, browser):
    from selenium.webdriver.common.by import By

    runs = graphql(ui.url, RUNS)["runsOrError"]["results"]
    parent = next(run for run in runs if run["pipelineName"] == "compress_and_evaluate"
                  and _tags(run)["dagster/partition"] == CHECKPOINT)
    _open(browser, f"{ui.url}/runs/{parent['runId']}", "Re-execute all")
    button = browser.find_element(By.XPATH, "//button[contains(., 'Re-execute all')]")
    assert not button.find_elements(By.CSS_SELECTOR, "[role='img']"), button.get_attribute("outerHTML")
    _screenshot(browser, "05-make-run-run-page")
    known = {run["runId"] for run in runs}
    button.click()
    new_ids = wait_for(lambda: {run["runId"] for run in graphql(ui.url, RUNS)["runsOrError"]["results"]} - known,
                       PAGE_TIMEOUT_S, "the re-executed run")
    (run_id,) = new_ids
    run = wait_for(lambda: _finished(ui.url, run_id), RUN_TIMEOUT_S, f"run {run_id} to finish")
    assert run["status"] == "SUCCESS", run
    tags = _tags(run)
    assert tags["dagster/parent_run_id"] == parent["runId"] and tags[STUDY_TAG] == "ci"
    assert {"path": ["evaluation"]} in [{"path": event["assetKey"]["path"]} for event in run["assetMaterializations"]]
    _open(browser, f"{ui.url}/runs/{run_id}", "Success")
    _screenshot(browser, "06-re-executed-run")


def test_a_partition_backfill_launched_through_the_api_completes(ui):
    partition = "abc-news.s1|tiny-llama.awq-w3g32"
    launched = graphql(ui.url, """mutation($names: [String!]) { launchPartitionBackfill(backfillParams: {
      assetSelection: [{path: ["evaluation"]}], partitionNames: $names}) { __typename
      ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""", names=[partition])
    assert launched["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["launchPartitionBackfill"]["backfillId"]
    query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
      status runs(limit: 10) { runId status tags { key value } } } } }"""

    def ended():
        backfill = graphql(ui.url, query, id=backfill_id)["partitionBackfillOrError"]
        return backfill if backfill["status"] not in ("REQUESTED", "CANCELING") else None

    backfill = wait_for(ended, RUN_TIMEOUT_S, f"backfill {backfill_id}", poll=2)
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    (run,) = backfill["runs"]
    assert run["status"] == "SUCCESS" and _tags(run)["dagster/partition"] == partition
    assert _tags(run)[STUDY_TAG] == "ci"  # the UI's runs name their study too


def test_the_report_fits_1280_pixels_with_every_figure(ui, browser):
    index = ui.root / "report" / "index.html"
    figures = sorted(path.name for path in index.parent.glob("*.png"))
    assert figures
    _open(browser, index.as_uri(), "Calibration-data findings")
    width, viewport = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert viewport <= WINDOW[0] and width <= viewport, (width, viewport)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
    assert sorted(src for src, _ in images) == figures
    assert all(loaded for _, loaded in images), images
    assert "Calibration sets" in browser.find_element("tag name", "body").text
    _screenshot(browser, "07-report")
