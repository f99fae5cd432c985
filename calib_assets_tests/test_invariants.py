import numpy as np
import pandas as pd

from calib_assets.compression import MagnitudeConfig
from calib_assets.invariants import _level_problems, _sparsity_problems, evaluation_problems
from calib_assets.study import load_study


def test_level_check_refuses_codes_wider_than_the_bit_width():
    codes = np.tile(np.arange(8, dtype=np.uint8), (2, 2))  # two groups of 8 codes, 3 bits each
    assert _level_problems(codes, bits=3) == []
    assert _level_problems(codes, bits=2) == ["code 7 needs more than 2 bits"]  # 8 levels, 4 allowed
    assert _level_problems(np.zeros((2, 16), dtype=np.uint8), bits=2) == []


def test_sparsity_check_enforces_n_of_m():
    weight = np.ones((2, 8))
    weight[:, [0, 1, 4, 5]] = 0
    assert _sparsity_problems(weight, MagnitudeConfig(n=2, m=4)) == []
    weight[1, 5] = 3.0
    assert _sparsity_problems(weight, MagnitudeConfig(n=2, m=4)) != []
    assert _sparsity_problems(weight, MagnitudeConfig(sparsity=0.5)) != []  # 7 of 16 zeros < 50%


def test_evaluation_check_wants_every_dataset_and_finite_values():
    study = load_study("ci")
    expected = [f"{d}-heldout" for d in study.eval_datasets] + [task.name for task in study.evaluation.tasks]
    values = [float("nan")] + [0.5] * (len(expected) - 1)
    table = pd.DataFrame({"eval_dataset": expected, "metric": "m", "value": values})
    problems = evaluation_problems(study, table)
    assert len(problems) == 1 and "nan" in problems[0]
    assert evaluation_problems(study, table.iloc[1:]) == [f"missing {expected[0]}"]
