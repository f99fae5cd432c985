"""lm-eval adapter against hand computations with a tiny random Llama and its byte-level tokenizer.

Offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set (conftest and here); every task reads local files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import string

import pandas as pd
import pytest
import torch
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from calib_assets.evaluation import (  # noqa: E402
    PAPER_TASKS,
    TaskSpec,
    build_next_sentence_task,
    evaluate_tasks,
    evaluate_tasks_detailed,
    upstream_yaml,
    write_lm_eval_task,
    write_local_override,
)
from calib_assets.models import load_model  # noqa: E402

MC_EXAMPLES = [
    {"doc_id": "a", "context": "The cat sat on the", "choices": ["mat.", "moon rocket ship.", "table", "x"],
     "label": 0},
    {"doc_id": "b", "context": "Rain falls from the", "choices": ["sky", "ground up high", "tree tops"], "label": 0},
    {"doc_id": "c", "context": "I like to drink", "choices": ["water", "sand", "a cup of tea", "ink"], "label": 2},
    {"doc_id": "d", "context": "Numbers: one, two,", "choices": ["three", "seven hundred", "zz"], "label": 1},
]
PIQA_ROWS = [
    {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Sing to it loudly.", "label": 0},
    {"goal": "Dry wet hands", "sol1": "Use a towel", "sol2": "Wave them in the air for a long while", "label": 0},
    {"goal": "Cut paper", "sol1": "Use a spoon", "sol2": "Use scissors", "label": 1},
]


def _ll_and_greedy(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation tokens | context) and whether each is the argmax, one sequence alone."""
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    target = whole[len(context_ids):]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)[len(context_ids) - 1:]
    total = sum(log_probs[i, token].item() for i, token in enumerate(target))
    greedy = all(log_probs[i].argmax().item() == token for i, token in enumerate(target))
    return total, greedy


def _hand_multiple_choice(model, tokenizer, context_of, examples):
    """acc / acc_norm per example: argmax of the summed log-probs, and of log-prob / len(choice string)."""
    acc, acc_norm = {}, {}
    for index, example in enumerate(examples):
        choices = example["choices"]
        lls = [_ll_and_greedy(model, tokenizer, context_of(example), " " + choice)[0] for choice in choices]
        normed = [ll / len(choice) for ll, choice in zip(lls, choices)]
        for scores in (lls, normed):  # no near-ties: the hand answer is unambiguous
            ranked = sorted(scores, reverse=True)
            assert ranked[0] - ranked[1] > 1e-3
        acc[index] = max(range(len(lls)), key=lls.__getitem__) == example["label"]
        acc_norm[index] = max(range(len(normed)), key=normed.__getitem__) == example["label"]
    return acc, acc_norm


def _greedy_cloze_examples(model, tokenizer, n_greedy: int, n_other: int):
    """Contexts whose greedy continuation is ' ' + one printable char (target = that char), plus contexts
    with a target the model does not predict greedily. The output head is permuted beforehand (see fixture)
    so that a space is often the greedy prediction."""
    rng = random.Random(0)
    space = tokenizer.encode(" ", add_special_tokens=False)[0]
    greedy: list[dict[str, str]] = []
    other: list[dict[str, str]] = []
    while len(greedy) < n_greedy or len(other) < n_other:
        contexts = ["".join(rng.choice(string.ascii_lowercase) for _ in range(12)) for _ in range(64)]
        ids = torch.tensor([tokenizer.encode(context, add_special_tokens=False) for context in contexts])
        with torch.no_grad():
            first = model(ids).logits[:, -1].argmax(-1).tolist()
            spaced = torch.cat([ids, torch.full((len(ids), 1), space)], dim=1)
            second = model(spaced).logits[:, -1].argmax(-1).tolist()
        for context, first_id, second_id in zip(contexts, first, second):
            char = tokenizer.decode([second_id])
            if first_id == space and len(char) == 1 and char in string.ascii_letters + string.digits + "#*|":
                if len(greedy) < n_greedy:
                    greedy.append({"doc_id": f"g{len(greedy)}", "context": context, "target": char})
            elif len(other) < n_other:
                other.append({"doc_id": f"o{len(other)}", "context": context, "target": "word"})
    return greedy + other


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from calib_assets.models import RandomLlama, prepare_model_folder

    folder = prepare_model_folder(RandomLlama(name="tiny"), tmp_path_factory.mktemp("models"))
    model, tokenizer = load_model(folder)
    # Swap the output rows of the most often predicted token and of ' ': still a random model, but one
    # whose greedy continuation is often a space, so that cloze greedy matches occur (acc is not all 0).
    space = tokenizer.encode(" ", add_special_tokens=False)[0]
    hash_id = tokenizer.encode("#", add_special_tokens=False)[0]
    with torch.no_grad():
        weight = model.lm_head.weight
        weight[[space, hash_id]] = weight[[hash_id, space]]
    return model, tokenizer


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    """One lm-eval run over three offline tasks: ours (multiple choice, cloze) and piqa on local files."""
    model, tokenizer = tiny
    root = tmp_path_factory.mktemp("tasks")
    cloze_examples = _greedy_cloze_examples(model, tokenizer, n_greedy=2, n_other=2)
    piqa_file = root / "piqa_local.jsonl"
    piqa_file.write_text("".join(json.dumps(row) + "\n" for row in PIQA_ROWS))
    built = build_next_sentence_task(_small_corpus(), n_examples=3, n_choices=3, seed=0, context_sentences=1)
    specs = [
        write_lm_eval_task(built, root / "ns", "tiny_next_sentence"),
        write_lm_eval_task(MC_EXAMPLES, root / "mc", "tiny_mc"),
        write_lm_eval_task(cloze_examples, root / "cloze", "tiny_cloze"),
        TaskSpec("piqa", data_files=str(piqa_file)),
    ]
    result = evaluate_tasks_detailed(model, tokenizer, specs, batch_size=3, work_dir=root / "work")
    return result, cloze_examples, root


def _small_corpus() -> pd.DataFrame:
    rng = random.Random(1)
    words = "red blue green stone river hill tree road light dark".split()
    rows = []
    for index in range(10):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 8))).capitalize() + "." for _ in range(3)]
        split = "heldout" if index % 2 == 0 else "calibration"
        rows.append({"doc_id": f"d{index}", "text": " ".join(sentences), "split": split})
    return pd.DataFrame(rows)


def test_built_task_runs_through_lm_eval(evaluated):
    result, _, _ = evaluated
    assert {row["metric"]: row["n_samples"] for row in result.rows if row["task"] == "tiny_next_sentence"} == {
        "acc": 3, "acc_norm": 3}
    assert sorted(result.correct["tiny_next_sentence"]["acc"]) == [0, 1, 2]


def _row(rows, task, metric):
    [row] = [row for row in rows if row["task"] == task and row["metric"] == metric]
    return row


def test_multiple_choice_matches_hand_computation(tiny, evaluated):
    model, tokenizer = tiny
    result, _, _ = evaluated
    acc, acc_norm = _hand_multiple_choice(model, tokenizer, lambda example: example["context"], MC_EXAMPLES)
    assert result.correct["tiny_mc"] == {"acc": acc, "acc_norm": acc_norm}
    assert _row(result.rows, "tiny_mc", "acc")["value"] == pytest.approx(sum(acc.values()) / len(acc))
    assert _row(result.rows, "tiny_mc", "acc_norm")["value"] == pytest.approx(sum(acc_norm.values()) / len(acc))
    row = _row(result.rows, "tiny_mc", "acc")
    assert row["n_samples"] == 4 and row["stderr"] is not None and row["stderr"] > 0


def test_cloze_acc_is_the_greedy_check_and_perplexity_matches(tiny, evaluated):
    model, tokenizer = tiny
    result, examples, _ = evaluated
    hand = [_ll_and_greedy(model, tokenizer, example["context"], " " + example["target"]) for example in examples]
    greedy = {index: is_greedy for index, (_, is_greedy) in enumerate(hand)}
    assert greedy == {0: True, 1: True, 2: False, 3: False}  # both outcomes occur: the check is discriminative
    assert result.correct["tiny_cloze"] == {"acc": greedy}
    assert _row(result.rows, "tiny_cloze", "acc")["value"] == pytest.approx(0.5)
    expected_ppl = math.exp(-sum(ll for ll, _ in hand) / len(hand))  # lm-eval: exp(-mean loglikelihood)
    assert _row(result.rows, "tiny_cloze", "perplexity")["value"] == pytest.approx(expected_ppl, rel=1e-4)


def test_paper_task_on_local_files_uses_the_upstream_prompt(tiny, evaluated):
    """piqa through `include:` of lm-eval's real YAML: prompt 'Question: {goal}\\nAnswer:', choices sol1/sol2."""
    model, tokenizer = tiny
    result, _, root = evaluated
    examples = [{"choices": [row["sol1"], row["sol2"]], "label": row["label"], **row} for row in PIQA_ROWS]
    acc, acc_norm = _hand_multiple_choice(model, tokenizer, lambda row: f"Question: {row['goal']}\nAnswer:", examples)
    assert result.correct["piqa"] == {"acc": acc, "acc_norm": acc_norm}
    assert {row["metric"] for row in result.rows if row["task"] == "piqa"} == {"acc", "acc_norm"}
    assert _row(result.rows, "piqa", "acc")["n_samples"] == 3
    derived = yaml.safe_load((root / "work" / "piqa__local" / "piqa__local.yaml").read_text())
    assert derived["include"] == str(upstream_yaml("piqa"))
    assert derived["dataset_path"] == "json" and derived["test_split"] == "test"


def test_bf16_model_and_limit(tiny, tmp_path):
    model, tokenizer = tiny
    spec = write_lm_eval_task(MC_EXAMPLES, tmp_path / "mc", "tiny_mc")
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    rows = evaluate_tasks(bf16, tokenizer, [spec], batch_size=2, limit=2)
    assert {row["metric"] for row in rows} == {"acc", "acc_norm"}
    assert all(row["n_samples"] == 2 and 0 <= row["value"] <= 1 for row in rows)


def test_paper_task_yamls_exist_and_bad_specs_fail_early(tmp_path):
    for name in PAPER_TASKS:
        assert upstream_yaml(name).is_file()
    with pytest.raises(ValueError, match="does not exist"):
        write_local_override(TaskSpec("boolq", data_files=str(tmp_path / "missing.jsonl")), tmp_path)
    with pytest.raises(ValueError, match="not both"):
        TaskSpec("boolq", data_files="x.jsonl", include_path=str(tmp_path))
    with pytest.raises(ValueError, match="task names repeat"):
        evaluate_tasks(None, None, ["piqa", "piqa"])
    spec = write_lm_eval_task(MC_EXAMPLES, tmp_path / "mc", "tiny_mc")
    with pytest.raises(ValueError, match="knows no task"):
        evaluate_tasks(None, None, [TaskSpec("other_name", include_path=spec.include_path)])
    with pytest.raises(ValueError, match="is not a folder"):
        evaluate_tasks(None, None, [TaskSpec("mine", include_path=str(tmp_path / "nope"))])


def test_bootstrap_stderr_runs_without_forking(monkeypatch):
    """lm-eval's bootstrap forks a process pool unless told not to; forked from a process with running
    threads that can deadlock, so the harness runs it in-process."""
    import multiprocessing

    from lm_eval.api.metrics import bootstrap_stderr, mean

    from calib_assets.evaluation.harness import _bootstrap_in_process

    def no_pool(*args, **kwargs):
        raise AssertionError("lm-eval forked a process pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    with _bootstrap_in_process():
        stderr = bootstrap_stderr(mean, values, 200)
    assert 0 < stderr < 1
    with pytest.raises(AssertionError, match="forked"):
        bootstrap_stderr(mean, values, 200)


def _random_requests(vocab: int, n: int, seed: int):
    """(key, context ids, continuation ids) of mixed lengths: contexts 1-40 tokens, continuations 1-6, some
    contexts shared by several continuations and some one-token continuations (HFLM's logits cache)."""
    rng = random.Random(seed)
    requests: list[tuple[tuple[str, str], list[int], list[int]]] = []
    while len(requests) < n:
        context = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        for _ in range(rng.choice([1, 1, 3])):
            continuation = [rng.randrange(vocab) for _ in range(rng.choice([1, 1, 2, 6]))]
            requests.append(((str(len(requests)), "c"), context, continuation))
    return requests[:n]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_continuation_only_scorer_equals_hflm(tiny, dtype):
    """The lean loglikelihood against lm-eval's own HFLM path on the same requests: the same log-probabilities
    within float tolerance and the same greedy flags (the plain version is HFLM itself)."""
    from lm_eval.models.huggingface import HFLM

    from calib_assets.evaluation.loglikelihood import ContinuationOnlyLM

    model, tokenizer = tiny
    model = copy.deepcopy(model).to(dtype)
    requests = _random_requests(model.config.vocab_size, 45, seed=3)
    answers = {}
    for kind in (HFLM, ContinuationOnlyLM):
        lm = kind(pretrained=model, tokenizer=tokenizer, batch_size=4, softmax_dtype=torch.float32)
        answers[kind] = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    ours, theirs = answers[ContinuationOnlyLM], answers[HFLM]
    assert len(ours) == len(theirs) == len(requests)
    tolerance = 1e-4 if dtype == torch.float32 else 0.15
    for (ll_ours, greedy_ours), (ll_theirs, greedy_theirs) in zip(ours, theirs):
        assert abs(ll_ours - ll_theirs) <= tolerance * max(1.0, abs(ll_theirs))
        assert greedy_ours == greedy_theirs
    if dtype == torch.float32:  # and each request scored alone, unpadded, in float64 log-softmax
        for (ll_ours, greedy_ours), (_, context, continuation) in zip(ours[:8], requests[:8]):
            ll_alone, greedy_alone = _ll_and_greedy_ids(model, context, continuation)
            assert ll_ours == pytest.approx(ll_alone, rel=1e-4, abs=1e-4) and greedy_ours == greedy_alone


def _ll_and_greedy_ids(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    with torch.no_grad():
        logits = model(torch.tensor([(context + continuation)[:-1]])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)[len(context) - 1:]
    total = sum(log_probs[i, token].item() for i, token in enumerate(continuation))
    return total, all(log_probs[i].argmax().item() == token for i, token in enumerate(continuation))
