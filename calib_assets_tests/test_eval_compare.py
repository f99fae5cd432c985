"""Answer flips and next-token KL against hand computations."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from calib_assets.evaluation import answer_flips, kl_from_logits, next_token_kl
from calib_assets.models import load_model


def test_answer_flips_counts_both_directions():
    dense = [True, True, False, False, True]
    compressed = [True, False, True, False, False]
    assert answer_flips(dense, compressed) == {
        "flips": 3, "correct_to_wrong": 2, "wrong_to_correct": 1, "n_examples": 5, "share": 0.6,
    }
    # mappings doc index -> correct (as the harness returns them), in any key order
    assert answer_flips({3: True, 7: False}, {7: False, 3: True})["flips"] == 0


def test_answer_flips_rejects_different_examples():
    with pytest.raises(ValueError, match="different examples"):
        answer_flips({0: True, 1: False}, {0: True, 2: False})
    with pytest.raises(ValueError, match="no examples"):
        answer_flips([], [])


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits at position t are logits[t], whatever the tokens."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.table = logits

    def forward(self, input_ids, use_cache=False):
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.table[:length].unsqueeze(0).expand(batch, length, -1))


def test_kl_of_known_distributions_equals_the_formula():
    p = [[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]
    q = [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.2, 0.6]]
    expected = [sum(pi * math.log(pi / qi) for pi, qi in zip(row_p, row_q)) for row_p, row_q in zip(p, q)]
    # logits = log-probabilities + an arbitrary per-row shift (softmax is shift invariant)
    dense = _FixedLogits(torch.log(torch.tensor(p)) + 3.0)
    compressed = _FixedLogits(torch.log(torch.tensor(q)) - 1.5)
    windows = torch.zeros(3, 2, dtype=torch.long)
    assert next_token_kl(dense, compressed, windows, batch_size=2) == pytest.approx(sum(expected) / 2, rel=1e-6)
    per_position = kl_from_logits(torch.log(torch.tensor(p)), torch.log(torch.tensor(q)))
    assert per_position.tolist() == pytest.approx(expected, rel=1e-6)
    # KL is not symmetric: the direction is KL(dense || compressed)
    reverse = [sum(qi * math.log(qi / pi) for pi, qi in zip(row_p, row_q)) for row_p, row_q in zip(p, q)]
    assert next_token_kl(compressed, dense, windows, batch_size=3) == pytest.approx(sum(reverse) / 2, rel=1e-6)


def test_kl_of_real_models(tiny_model_folder):
    model, _ = load_model(tiny_model_folder)
    windows = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(0))
    assert next_token_kl(model, model, windows, batch_size=2) == 0.0
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.lm_head.weight.mul_(1.5)
    # hand: one window at a time, float64, every position
    total = 0.0
    for window in windows:
        with torch.no_grad():
            log_p = torch.log_softmax(model(window[None]).logits[0].double(), -1)
            log_q = torch.log_softmax(perturbed(window[None]).logits[0].double(), -1)
        total += (log_p.exp() * (log_p - log_q)).sum().item()
    expected = total / windows.numel()
    assert expected > 0
    assert next_token_kl(model, perturbed, windows.tolist(), batch_size=3) == pytest.approx(expected, rel=1e-4)


def test_kl_bad_windows():
    model = _FixedLogits(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-empty"):
        next_token_kl(model, model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        next_token_kl(model, model, torch.zeros(1, 4, dtype=torch.long), batch_size=0)
