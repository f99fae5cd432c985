"""The summary `calib-assets run` and `findings` print first: mart_src_spread (dbt) laid out per method
and source by runner.seed_spread_summary."""

import math

import pandas as pd
import pytest

from calib_assets.runner import seed_spread_summary
from calib_assets_tests.findings_fixtures import _row, dbt_build, read_table, write_warehouse

pytestmark = pytest.mark.xdist_group("dbt_marts")


def _rows():
    rows = []
    for seed, (ppl_a, ppl_b, acc) in enumerate([(10.0, 20.0, 0.50), (12.0, 22.0, 0.60), (14.0, 24.0, 0.40)]):
        calib = f"web.s{seed}"
        scores = [("a-heldout", "perplexity", ppl_a), ("b-heldout", "perplexity", ppl_b), ("cloze", "acc", acc),
                  ("cloze", "acc_flip_share", 0.1),
                  ("cloze", "perplexity", 5000.0)]  # the task's own perplexity: not held-out text
        rows += [_row("m1.gptq-w3", "gptq", calib, "web", seed, 16, dataset, metric, value)
                 for dataset, metric, value in scores]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def mart(tmp_path_factory):
    work = tmp_path_factory.mktemp("runner-summary")
    path = write_warehouse(work, _rows())
    completed = dbt_build(path, work)
    assert completed.returncode == 0, completed.stdout[-5000:]
    return read_table(path, "select * from mart_src_spread")


def test_seed_spread_puts_task_accuracy_spread_next_to_perplexity_spread(mart):
    row = seed_spread_summary(mart).iloc[0]
    assert (row["method"], row["source"], row["sets"]) == ("gptq", "web", 3)
    ppl = [15.0, 17.0, 19.0]  # per set: mean of the two held-out perplexities
    assert row["ppl"] == pytest.approx(17.0) and row["ppl range"] == pytest.approx(4.0)
    assert row["ppl cv%"] == pytest.approx(100 * pd.Series(ppl).std() / 17.0)
    assert row["cloze acc"] == pytest.approx(50.0) and row["cloze acc range"] == pytest.approx(20.0)
    assert row["cloze acc cv%"] == pytest.approx(100 * math.sqrt(((10**2) * 2) / 2) / 50.0)
    assert not any("flip" in column for column in row.index)


def test_seed_spread_without_tasks_or_results(mart):
    only_ppl = seed_spread_summary(mart[mart["kind"] == "perplexity_average"])
    assert list(only_ppl.columns) == ["method", "source", "sets", "ppl", "ppl range", "ppl cv%"]
    assert seed_spread_summary(mart.iloc[0:0]).empty
    assert seed_spread_summary(mart[mart["kind"] == "task"]).empty  # no held-out perplexity: no summary


def test_a_method_on_several_models_gets_a_row_per_variant(mart):
    """Before the mart, two models compressed with one method made the pandas summary raise."""
    second = mart.assign(model="m2", variant="m2.gptq-w3", mean_value=mart["mean_value"] * 2)
    summary = seed_spread_summary(pd.concat([second, mart], ignore_index=True))
    assert list(summary.columns[:4]) == ["method", "variant", "source", "sets"]
    assert list(summary["variant"]) == ["m1.gptq-w3", "m2.gptq-w3"]
    assert list(summary["ppl"]) == pytest.approx([17.0, 34.0])


def test_a_task_a_source_lacks_has_no_mean_and_a_range_of_0(mart):
    other = mart[mart["kind"] == "perplexity_average"].assign(calibration_source="news")
    summary = seed_spread_summary(pd.concat([mart, other], ignore_index=True)).set_index("source")
    assert math.isnan(summary.loc["news", "cloze acc"]) and summary.loc["news", "cloze acc range"] == 0
    assert math.isnan(summary.loc["news", "cloze acc cv%"])


def test_timing_spans_tally_each_name_and_nest():
    import time

    from calib_assets import timing

    timing.reset()
    with timing.span("outer"):
        for _ in range(3):
            with timing.span("inner"):
                time.sleep(0.01)
    tally = timing.tally()
    assert list(tally) == ["inner", "outer"] and tally["inner"][1] == 3 and tally["outer"][1] == 1
    assert 0.03 <= tally["inner"][0] <= tally["outer"][0]
    try:
        with timing.span("raised"):
            raise KeyError("x")
    except KeyError:
        pass
    assert timing.tally()["raised"][1] == 1  # a span that raised still counts
    timing.reset()
    assert timing.tally() == {}


def test_where_the_time_went_lists_stages_with_shares_and_kinds_longest_first():
    from calib_assets.runner import where_time_went

    text = where_time_went({"baselines": 30.0, "compress_and_evaluate": 90.0},
                           {"evaluation: tasks (lm-eval)": (20.0, 4), "compression: method math": (50.0, 120)})
    lines = text.splitlines()
    assert "120.0 s in all" in lines[1]
    assert any("baselines" in line and "25.0%" in line for line in lines)
    assert any("compress_and_evaluate" in line and "75.0%" in line for line in lines)
    kinds = [line for line in lines if " call(s)" in line]
    assert "method math" in kinds[0] and "120 call(s)" in kinds[0] and "tasks" in kinds[1]
    assert "per step kind" not in where_time_went({"x": 1.0}, {})


def test_a_steps_output_goes_to_the_log_whatever_holds_the_terminal(tmp_path, capfd):
    """print, a logging handler and a progress bar made before the step (as lm-eval's and
    transformers' are, at import) and writes to the file descriptors themselves all reach the step log;
    the terminal gets only what is written to the stream the step is given."""
    import logging
    import os
    import sys

    from tqdm import tqdm

    from calib_assets.runner import step_output_to

    logger = logging.getLogger("held-the-terminal")
    logger.addHandler(logging.StreamHandler(sys.__stderr__))
    logger.propagate = False
    log = tmp_path / "steps.log"
    try:
        with step_output_to(log) as terminal:
            print("printed")
            logger.warning("a logged warning")
            for _ in tqdm(range(3), desc="a progress bar", file=sys.__stderr__):
                pass
            os.write(1, b"fd 1\n")
            os.write(2, b"fd 2\n")
            print("to the user", file=terminal)
    finally:
        logger.handlers.clear()
    print("after the step")
    captured = capfd.readouterr()
    written = log.read_text()
    for line in ("printed", "a logged warning", "a progress bar", "fd 1", "fd 2"):
        assert line in written and line not in captured.out + captured.err, line
    assert captured.err == "to the user\n" and captured.out == "after the step\n" and "to the user" not in written
