"""Offline task construction: determinism, held-out only, distractors from other documents, lm-eval files."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter

import pandas as pd
import pytest
import yaml

from calib_assets.evaluation import (
    OfflineTask,
    TaskSpec,
    build_cloze_task,
    build_next_sentence_task,
    check_heldout_only,
    read_task_manifest,
    write_lm_eval_task,
)

WORDS = ("river stone market window garden silver letter morning engine harbour village station cloud "
         "paper bridge candle forest music doctor winter summer island mirror basket ladder pocket").split()


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return " ".join([words[0].capitalize(), *words[1:]]) + "."


def _corpus(n_docs: int = 40, seed: int = 7) -> pd.DataFrame:
    """Synthetic documents of 6-10 sentences (4-18 words each), alternately held-out and calibration."""
    rng = random.Random(seed)
    rows = []
    for index in range(n_docs):
        text = " ".join(_sentence(rng, rng.randint(4, 18)) for _ in range(rng.randint(6, 10)))
        doc_id = hashlib.sha256(text.encode()).hexdigest()[:16]
        rows.append({"doc_id": doc_id, "text": text, "split": "heldout" if index % 2 else "calibration"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return _corpus()


def _heldout_ids(corpus: pd.DataFrame) -> set[str]:
    return set(corpus.loc[corpus["split"] == "heldout", "doc_id"])


def _text_of(corpus: pd.DataFrame) -> dict[str, str]:
    return dict(zip(corpus["doc_id"], corpus["text"]))


def test_cloze_is_deterministic_per_seed_and_seeds_differ(corpus):
    first = build_cloze_task(corpus, n_examples=8, seed=1, min_context_words=15)
    again = build_cloze_task(corpus.sample(frac=1.0, random_state=3), n_examples=8, seed=1, min_context_words=15)
    other = build_cloze_task(corpus, n_examples=8, seed=2, min_context_words=15)
    assert first.examples == again.examples and first.manifest == again.manifest
    assert first.examples != other.examples


def test_cloze_examples_are_last_words_of_heldout_passages(corpus):
    task = build_cloze_task(corpus, n_examples=10, seed=0, min_context_words=15)
    texts = _text_of(corpus)
    heldout = _heldout_ids(corpus)
    assert task.kind == "cloze" and len(task) == 10
    assert len({example["doc_id"] for example in task.examples}) == 10  # one example per document
    for example in task.examples:
        assert example["doc_id"] in heldout
        assert re.fullmatch(r"[A-Za-z]{3,}", example["target"])
        assert len(example["context"].split()) >= 15
        # the passage (context + target) ends a sentence of that very document
        assert example["context"] + " " + example["target"] + "." in texts[example["doc_id"]]
    assert set(task.manifest["doc_ids"]) == {example["doc_id"] for example in task.examples}
    assert task.manifest["seed"] == 0 and task.manifest["n"] == 10
    check_heldout_only(task.manifest, corpus)


def test_next_sentence_deterministic_gold_is_next_sentence_distractors_from_other_docs(corpus):
    task = build_next_sentence_task(corpus, n_examples=15, n_choices=4, seed=5, context_sentences=2)
    again = build_next_sentence_task(corpus.iloc[::-1], n_examples=15, n_choices=4, seed=5, context_sentences=2)
    other = build_next_sentence_task(corpus, n_examples=15, n_choices=4, seed=6, context_sentences=2)
    assert task.examples == again.examples
    assert task.examples != other.examples
    texts = _text_of(corpus)
    heldout = _heldout_ids(corpus)
    for example in task.examples:
        choices, label = example["choices"], example["label"]
        assert len(choices) == 4 and 0 <= label < 4
        gold = choices[label]
        own_text = texts[example["doc_id"]]
        assert example["context"] + " " + gold in own_text
        assert len(example["context"].split(".")) - 1 == 2  # two context sentences
        distractor_docs = example["distractor_doc_ids"]
        assert len(set(distractor_docs)) == 3 and example["doc_id"] not in distractor_docs
        distractors = [choice for index, choice in enumerate(choices) if index != label]
        for doc_id, sentence in zip(distractor_docs, distractors):
            assert doc_id in heldout and sentence in texts[doc_id]
            # similar length: within 30% of the gold's word count (the fixture has plenty of candidates)
            assert abs(len(sentence.split()) - len(gold.split())) <= 0.3 * len(gold.split())
    labels = Counter(example["label"] for example in task.examples)
    assert len(labels) >= 2  # the gold position is drawn, not constant
    used = {example["doc_id"] for example in task.examples}
    used |= {doc for example in task.examples for doc in example["distractor_doc_ids"]}
    assert set(task.manifest["doc_ids"]) == used and used <= heldout
    check_heldout_only(task.manifest, corpus)


def test_calibration_rows_are_never_read(corpus):
    """Changing only calibration rows changes nothing; the manifest fingerprint covers held-out rows only."""
    changed = corpus.copy()
    mask = changed["split"] == "calibration"
    changed.loc[mask, "text"] = "Completely different text. " * 30
    for build in (build_cloze_task, build_next_sentence_task):
        kwargs = {"min_context_words": 15} if build is build_cloze_task else {}
        a = build(corpus, n_examples=5, seed=3, **kwargs)
        b = build(changed, n_examples=5, seed=3, **kwargs)
        assert a.examples == b.examples and a.manifest == b.manifest


def test_leak_check_rejects_calibration_and_unknown_ids(corpus):
    task = build_cloze_task(corpus, n_examples=3, seed=0, min_context_words=15)
    calibration_id = corpus.loc[corpus["split"] == "calibration", "doc_id"].iloc[0]
    with pytest.raises(ValueError, match="1 non-held-out documents"):
        check_heldout_only({**task.manifest, "doc_ids": [*task.manifest["doc_ids"], calibration_id]}, corpus)
    with pytest.raises(ValueError, match="1 documents absent"):
        check_heldout_only({**task.manifest, "doc_ids": ["0" * 16]}, corpus)


def test_clear_errors_for_bad_input(corpus):
    with pytest.raises(ValueError, match="no 'heldout' rows"):
        build_cloze_task(corpus[corpus["split"] == "calibration"], n_examples=1, seed=0)
    with pytest.raises(ValueError, match="asked for n_examples=500"):
        build_cloze_task(corpus, n_examples=500, seed=0, min_context_words=15)
    with pytest.raises(ValueError, match="n_choices 1"):
        build_next_sentence_task(corpus, n_examples=2, n_choices=1, seed=0)
    with pytest.raises(ValueError, match="lacks columns"):
        build_cloze_task(corpus.drop(columns=["split"]), n_examples=1, seed=0)


def test_written_task_folder(tmp_path, corpus):
    task = build_next_sentence_task(corpus, n_examples=4, seed=0)
    spec = write_lm_eval_task(task, tmp_path / "ns", "calib_next_sentence")
    assert spec == TaskSpec(name="calib_next_sentence", include_path=str((tmp_path / "ns").resolve()))
    config = yaml.safe_load((tmp_path / "ns" / "calib_next_sentence.yaml").read_text())
    data_file = tmp_path / "ns" / "test.jsonl"
    assert config["dataset_path"] == "json" and config["test_split"] == "test"
    assert config["dataset_kwargs"] == {"data_files": {"test": str(data_file.resolve())}}
    assert config["output_type"] == "multiple_choice"
    assert [metric["metric"] for metric in config["metric_list"]] == ["acc", "acc_norm"]
    assert [json.loads(line) for line in data_file.read_text().splitlines()] == task.examples
    manifest = read_task_manifest(tmp_path / "ns")
    assert manifest["doc_ids"] == task.manifest["doc_ids"] and manifest["seed"] == 0 and manifest["n"] == 4
    assert manifest["source_fingerprint"] == task.manifest["source_fingerprint"]
    check_heldout_only(manifest, corpus)

    cloze = write_lm_eval_task(build_cloze_task(corpus, n_examples=3, seed=0, min_context_words=15),
                               tmp_path / "cz", "calib_cloze")
    config = yaml.safe_load((tmp_path / "cz" / "calib_cloze.yaml").read_text())
    assert config["output_type"] == "loglikelihood" and cloze.name == "calib_cloze"
    assert [metric["metric"] for metric in config["metric_list"]] == ["perplexity", "acc"]
    with pytest.raises(ValueError, match="task name"):
        write_lm_eval_task(task, tmp_path / "bad", "bad name")
    assert isinstance(task, OfflineTask)
