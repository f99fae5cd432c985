"""Offline zero-shot tasks built from held-out documents, written as lm-eval task folders.

Two task kinds, each built deterministically (per seed) from the `heldout` split of a corpus frame:
- cloze (LAMBADA style): a passage of a few sentences minus its last word; the target is that word.
  lm-eval `loglikelihood`; metrics perplexity and acc (the target is the greedy continuation).
- next sentence (HellaSwag style): a few sentences of a document; the gold choice is the document's next
  sentence, the distractors are sentences of similar length from OTHER held-out documents.
  lm-eval `multiple_choice`; metrics acc and acc_norm.

Only held-out rows are ever read. Each task carries a manifest (source fingerprint, seed, n, every doc id
used, distractor documents included) so that `check_heldout_only` can prove against the corpus that no
calibration document leaked into an evaluation.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from calib_assets.artifacts import atomic_dir, sha256_bytes, sha256_json, write_json
from calib_assets.evaluation.harness import TaskSpec
from calib_assets.sources.normalize import HELDOUT

CLOZE = "cloze"
NEXT_SENTENCE = "next_sentence"
TASK_KINDS = (CLOZE, NEXT_SENTENCE)
FORMAT_VERSION = 1
DATA_FILE = "test.jsonl"
MANIFEST_FILE = "manifest.json"

# A sentence ends at . ! or ? (optionally followed by a closing quote/bracket) before whitespace and an
# upper-case letter, digit or opening quote. Good enough for news and encyclopaedic prose.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]?\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_TARGET_WORD = re.compile(r"[A-Za-z]{3,}")
_FINAL_PUNCTUATION = ".!?;:,\"'\u201d\u2019)]"


@dataclass(frozen=True)
class OfflineTask:
    """Examples (JSON-ready dicts) of one task kind plus its manifest."""

    kind: str
    examples: list[dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, paragraph breaks included as boundaries; whitespace inside collapsed."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n|\n", text):
        paragraph = " ".join(paragraph.split())
        if paragraph:
            sentences.extend(part.strip() for part in _SENTENCE_END.split(paragraph) if part.strip())
    return sentences


def heldout_rows(corpus: pd.DataFrame) -> pd.DataFrame:
    """The held-out rows of a corpus frame, sorted by doc_id; a clear error when there are none."""
    missing = [column for column in ("doc_id", "text", "split") if column not in corpus.columns]
    if missing:
        raise ValueError(f"corpus frame lacks columns {missing}; tasks need doc_id, text and split")
    rows = corpus.loc[corpus["split"] == HELDOUT, ["doc_id", "text", "split"]]
    if rows.empty:
        splits = sorted(set(map(str, corpus["split"].unique())))
        raise ValueError(
            f"corpus frame has no {HELDOUT!r} rows (splits present: {splits}); tasks use held-out text only"
        )
    if rows["doc_id"].duplicated().any():
        raise ValueError("corpus frame has duplicate doc_id values among its held-out rows")
    rows = rows.sort_values("doc_id", kind="stable").reset_index(drop=True)
    assert (rows["split"] == HELDOUT).all()
    return rows


def heldout_fingerprint(rows: pd.DataFrame) -> str:
    """sha256 over (doc_id, split, text) of the held-out rows in doc_id order (the tasks' source)."""

    def chunks() -> Iterator[bytes]:
        for doc_id, split, text in zip(rows["doc_id"], rows["split"], rows["text"]):
            encoded = text.encode("utf-8")
            yield f"{doc_id}\t{split}\t{len(encoded)}\n".encode() + encoded

    return sha256_bytes(chunks())


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} {value!r} must be an integer >= {minimum}")


def _manifest(kind: str, rows: pd.DataFrame, seed: int, examples: list[dict], params: dict, used: set[str]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source_fingerprint": heldout_fingerprint(rows),
        "source_split": HELDOUT,
        "source_documents": int(len(rows)),
        "seed": seed,
        "n": len(examples),
        "params": params,
        "doc_ids": sorted(used),
    }


def build_cloze_task(
    heldout_df: pd.DataFrame,
    *,
    n_examples: int,
    seed: int,
    min_context_words: int = 40,
    max_context_words: int = 200,
) -> OfflineTask:
    """LAMBADA-style examples: {doc_id, context, target}; at most one per document.

    The passage is a run of consecutive sentences of a held-out document, ending at a sentence whose
    last word (final punctuation dropped) is letters only and at least 3 long; the context holds at
    least `min_context_words` words (passages are cut to their last `max_context_words` words).
    Fewer than `n_examples` eligible documents is an error naming how many there are.
    """
    _check_count("n_examples", n_examples, 1)
    _check_count("min_context_words", min_context_words, 1)
    _check_count("max_context_words", max_context_words, min_context_words)
    rows = heldout_rows(heldout_df)
    rng = random.Random(f"cloze:{seed}")
    candidates: list[dict[str, Any]] = []
    for doc_id, text in zip(rows["doc_id"], rows["text"]):
        options = _cloze_options(split_sentences(text), min_context_words, max_context_words)
        if options:
            context, target = options[rng.randrange(len(options))]
            candidates.append({"doc_id": doc_id, "context": context, "target": target})
    if len(candidates) < n_examples:
        raise ValueError(
            f"only {len(candidates)} held-out documents yield a cloze example with >= {min_context_words} context "
            f"words; asked for n_examples={n_examples}"
        )
    examples = sorted(rng.sample(candidates, n_examples), key=lambda example: example["doc_id"])
    params = {"min_context_words": min_context_words, "max_context_words": max_context_words}
    used = {example["doc_id"] for example in examples}
    return OfflineTask(CLOZE, examples, _manifest(CLOZE, rows, seed, examples, params, used))


def _cloze_options(sentences: list[str], min_words: int, max_words: int) -> list[tuple[str, str]]:
    """(context, target) for every sentence end that gives a valid target and enough context."""
    options = []
    words: list[str] = []
    for sentence in sentences:
        words = (words + sentence.split())[-(max_words + 1):]
        last = words[-1].rstrip(_FINAL_PUNCTUATION) if words else ""
        if len(words) - 1 >= min_words and _TARGET_WORD.fullmatch(last):
            options.append((" ".join(words[:-1]), last))
    return options


def build_next_sentence_task(
    heldout_df: pd.DataFrame,
    *,
    n_examples: int,
    n_choices: int = 4,
    seed: int,
    context_sentences: int = 3,
    min_sentence_words: int = 5,
    length_tolerance: float = 0.3,
) -> OfflineTask:
    """HellaSwag-style examples: {doc_id, context, choices, label, distractor_doc_ids}.

    Context = `context_sentences` consecutive sentences of a held-out document, gold = its next sentence
    (at least `min_sentence_words` words). Each distractor is a sentence of a different held-out document
    (one per document, never the example's own) whose word count is within `length_tolerance` of the
    gold's (widened to the closest lengths if too few qualify). The gold position is drawn per example.
    """
    _check_count("n_examples", n_examples, 1)
    _check_count("n_choices", n_choices, 2)
    _check_count("context_sentences", context_sentences, 1)
    _check_count("min_sentence_words", min_sentence_words, 1)
    if not 0 <= length_tolerance:
        raise ValueError(f"length_tolerance {length_tolerance!r} must be >= 0")
    rows = heldout_rows(heldout_df)
    rng = random.Random(f"next_sentence:{seed}")
    documents = [(doc_id, split_sentences(text)) for doc_id, text in zip(rows["doc_id"], rows["text"])]
    if len(documents) < n_choices:
        raise ValueError(
            f"{len(documents)} held-out documents cannot supply {n_choices - 1} distractors from other documents"
        )
    # Distractor pool: (word count, doc_id, sentence) of every long-enough sentence of every held-out doc.
    pool = [
        (len(sentence.split()), doc_id, sentence)
        for doc_id, sentences in documents
        for sentence in sentences
        if len(sentence.split()) >= min_sentence_words
    ]
    candidates = []
    for doc_id, sentences in documents:
        positions = [
            index
            for index in range(context_sentences, len(sentences))
            if len(sentences[index].split()) >= min_sentence_words
        ]
        if positions:
            index = positions[rng.randrange(len(positions))]
            candidates.append((doc_id, " ".join(sentences[index - context_sentences : index]), sentences[index]))
    if len(candidates) < n_examples:
        raise ValueError(
            f"only {len(candidates)} held-out documents have {context_sentences} sentences followed by one of "
            f">= {min_sentence_words} words; asked for n_examples={n_examples}"
        )
    chosen = sorted(rng.sample(candidates, n_examples))
    examples = []
    used: set[str] = set()
    for doc_id, context, gold in chosen:
        distractors = _distractors(pool, doc_id, gold, n_choices - 1, length_tolerance, rng)
        label = rng.randrange(n_choices)
        choices = [sentence for _, sentence in distractors]
        choices.insert(label, gold)
        examples.append(
            {
                "doc_id": doc_id,
                "context": context,
                "choices": choices,
                "label": label,
                "distractor_doc_ids": [other for other, _ in distractors],
            }
        )
        used.add(doc_id)
        used.update(other for other, _ in distractors)
    params = {
        "n_choices": n_choices,
        "context_sentences": context_sentences,
        "min_sentence_words": min_sentence_words,
        "length_tolerance": length_tolerance,
    }
    return OfflineTask(NEXT_SENTENCE, examples, _manifest(NEXT_SENTENCE, rows, seed, examples, params, used))


def _distractors(pool, doc_id: str, gold: str, k: int, tolerance: float, rng: random.Random) -> list[tuple[str, str]]:
    """k (doc_id, sentence) from k distinct other documents, of length close to the gold sentence's."""
    gold_words = len(gold.split())
    by_doc: dict[str, list[tuple[int, str]]] = {}
    for words, other, sentence in pool:
        if other != doc_id and sentence != gold:
            by_doc.setdefault(other, []).append((abs(words - gold_words), sentence))
    if len(by_doc) < k:
        raise ValueError(f"only {len(by_doc)} other held-out documents have sentences for {k} distractors")
    limit = tolerance * gold_words
    near = {other: [s for gap, s in items if gap <= limit] for other, items in by_doc.items()}
    near = {other: sentences for other, sentences in near.items() if sentences}
    if len(near) >= k:
        others = rng.sample(sorted(near), k)
        return [(other, near[other][rng.randrange(len(near[other]))]) for other in others]
    # Too few within the tolerance: the k documents holding the closest lengths.
    closest = sorted((min(items)[0], other, min(items)[1]) for other, items in by_doc.items())[:k]
    return [(other, sentence) for _, other, sentence in closest]


def _task_yaml(kind: str, task_name: str, data_file: Path) -> dict[str, Any]:
    common = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": "context",
    }
    if kind == CLOZE:
        return {
            **common,
            "output_type": "loglikelihood",
            "doc_to_target": "{{' ' + target}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": {"version": FORMAT_VERSION},
        }
    return {
        **common,
        "output_type": "multiple_choice",
        "doc_to_target": "label",
        "doc_to_choice": "choices",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": FORMAT_VERSION},
    }


def _infer_kind(examples: Sequence[dict]) -> str:
    if not examples:
        raise ValueError("a task needs at least one example")
    if all("choices" in example and "label" in example for example in examples):
        return NEXT_SENTENCE
    if all("target" in example for example in examples):
        return CLOZE
    raise ValueError("examples must all have 'context' + 'target' (cloze) or 'context' + 'choices' + 'label'")


_TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def write_lm_eval_task(examples: OfflineTask | Sequence[dict], directory: Path | str, task_name: str) -> TaskSpec:
    """Write `<task_name>.yaml`, `test.jsonl` and `manifest.json` into `directory` (atomically).

    `examples` is an OfflineTask (its manifest is kept) or a list of example dicts (kind inferred).
    Returns a `TaskSpec` naming the task and the folder lm-eval must include.
    """
    import yaml

    if not _TASK_NAME.fullmatch(task_name):
        raise ValueError(f"task name {task_name!r} must be letters, digits and underscores, starting with a letter")
    if isinstance(examples, OfflineTask):
        kind, rows, manifest = examples.kind, examples.examples, dict(examples.manifest)
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {kind!r}; allowed: {TASK_KINDS}")
    else:
        rows = list(examples)
        kind = _infer_kind(rows)
        manifest = {"format_version": FORMAT_VERSION, "kind": kind, "n": len(rows),
                    "doc_ids": sorted({str(row["doc_id"]) for row in rows if "doc_id" in row})}
    if not rows:
        raise ValueError("a task needs at least one example")
    final = Path(directory).resolve()
    data_file = final / DATA_FILE
    manifest.update({"task": task_name, "examples_fingerprint": sha256_json(rows)})
    with atomic_dir(final) as tmp:
        (tmp / DATA_FILE).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        (tmp / f"{task_name}.yaml").write_text(yaml.safe_dump(_task_yaml(kind, task_name, data_file), sort_keys=False))
        write_json(tmp / MANIFEST_FILE, manifest)
    return TaskSpec(name=task_name, include_path=str(final))


def read_task_manifest(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{str(directory)!r} is not a written task folder: {MANIFEST_FILE} is missing")
    return json.loads(path.read_text())


class TaskLeakError(ValueError):
    """A task uses documents that are not held-out evaluation text."""


def check_heldout_only(manifest: dict[str, Any], corpus: pd.DataFrame) -> None:
    """Raise TaskLeakError unless every doc id of the task manifest is a held-out document of `corpus`."""
    split = dict(zip(corpus["doc_id"], corpus["split"]))
    unknown = [doc_id for doc_id in manifest["doc_ids"] if doc_id not in split]
    leaked = [doc_id for doc_id in manifest["doc_ids"] if split.get(doc_id, HELDOUT) != HELDOUT]
    if unknown or leaked:
        raise TaskLeakError(
            f"task {manifest.get('task', manifest.get('kind'))!r} uses {len(leaked)} non-held-out documents "
            f"{leaked[:5]} and {len(unknown)} documents absent from the corpus {unknown[:5]}"
        )
