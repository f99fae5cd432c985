import math

import pandas as pd
import pytest

from calib_assets.runner import seed_spread_summary


def _rows():
    rows = []
    for calib, (ppl_a, ppl_b, acc) in {"web.s0": (10.0, 20.0, 0.50), "web.s1": (12.0, 22.0, 0.60),
                                       "web.s2": (14.0, 24.0, 0.40)}.items():
        rows += [{"method": "gptq", "calibration_source": "web", "calib": calib, "eval_dataset": "a-heldout",
                  "metric": "perplexity", "value": ppl_a},
                 {"method": "gptq", "calibration_source": "web", "calib": calib, "eval_dataset": "b-heldout",
                  "metric": "perplexity", "value": ppl_b},
                 {"method": "gptq", "calibration_source": "web", "calib": calib, "eval_dataset": "cloze",
                  "metric": "acc", "value": acc},
                 {"method": "gptq", "calibration_source": "web", "calib": calib, "eval_dataset": "cloze",
                  "metric": "acc_flip_share", "value": 0.1},
                 {"method": "gptq", "calibration_source": "web", "calib": calib, "eval_dataset": "cloze",
                  "metric": "perplexity", "value": 5000.0}]  # the task's own perplexity: not held-out text
    return pd.DataFrame(rows)


def test_seed_spread_puts_task_accuracy_spread_next_to_perplexity_spread():
    row = seed_spread_summary(_rows()).iloc[0]
    assert (row["method"], row["source"], row["sets"]) == ("gptq", "web", 3)
    ppl = [15.0, 17.0, 19.0]  # per set: mean of the two held-out perplexities
    assert row["ppl"] == pytest.approx(17.0) and row["ppl range"] == pytest.approx(4.0)
    assert row["ppl cv%"] == pytest.approx(100 * pd.Series(ppl).std() / 17.0)
    assert row["cloze acc"] == pytest.approx(50.0) and row["cloze acc range"] == pytest.approx(20.0)
    assert row["cloze acc cv%"] == pytest.approx(100 * math.sqrt(((10**2) * 2) / 2) / 50.0)
    assert not any("flip" in column for column in row.index)


def test_seed_spread_without_tasks_or_results():
    rows = _rows()
    only_ppl = seed_spread_summary(rows[(rows["metric"] == "perplexity") & (rows["eval_dataset"] != "cloze")])
    assert list(only_ppl.columns) == ["method", "source", "sets", "ppl", "ppl range", "ppl cv%"]
    assert seed_spread_summary(rows.iloc[0:0]).empty
