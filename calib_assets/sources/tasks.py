"""Task-formatted calibration text (Bandari et al., 2024): examples of a task's training split rendered
with the task's zero-shot prompt and its answer, optionally preceded by in-context examples.

Templates follow lm-eval's prompts for these tasks, with the gold answer filled in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from calib_assets.sources.specs import HuggingFaceSource, TaskSource

Example = tuple[str, str]  # (prompt, answer)


def _choice(row: dict, key: str) -> str:
    choices = row["choices"]
    return choices["text"][choices["label"].index(row[key])]


def _winogrande(row: dict) -> Example:
    option = row["option1"] if str(row["answer"]) == "1" else row["option2"]
    before, _, after = row["sentence"].partition("_")
    return before + option, after


TASK_FORMATS: dict[str, Callable[[dict], Example]] = {
    "piqa": lambda row: (f"Question: {row['goal']}\nAnswer:", " " + row[f"sol{int(row['label']) + 1}"]),
    "arc": lambda row: (f"Question: {row['question']}\nAnswer:", " " + _choice(row, "answerKey")),
    "openbookqa": lambda row: (f"Question: {row['question_stem']}\nAnswer:", " " + _choice(row, "answerKey")),
    "boolq": lambda row: (f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
                          " yes" if row["answer"] in (True, 1, "true", "True") else " no"),
    "hellaswag": lambda row: (row["ctx"], " " + row["endings"][int(row["label"])]),
    "winogrande": _winogrande,
    "generic": lambda row: (f"Question: {row['question']}\nAnswer:", " " + str(row["answer"])),
}


def render(example: Example) -> str:
    prompt, answer = example
    return prompt + answer


def format_examples(rows: list[dict], task: str, *, template: str = "zero_shot", shots: int = 3,
                    seed: int = 0) -> list[str]:
    """One text per row: its rendered example, after `shots` other rows' examples when in_context (the
    shots of row i are drawn with a RNG seeded by (seed, i), so a text does not depend on the others)."""
    formatter = TASK_FORMATS[task]
    examples = []
    for index, row in enumerate(rows):
        try:
            examples.append(formatter(row))
        except (KeyError, ValueError, IndexError, TypeError) as error:
            raise ValueError(f"row {index} does not fit task format {task!r} ({type(error).__name__}: {error}); "
                             f"row fields: {sorted(row)}") from error
    if template == "zero_shot":
        return [render(example) for example in examples]
    if len(examples) <= shots:
        raise ValueError(f"in_context with shots={shots} needs more than {shots} rows; the split has {len(examples)}")
    texts = []
    for index in range(len(examples)):
        others = [i for i in range(len(examples)) if i != index]
        chosen = random.Random(seed * 1_000_003 + index).sample(others, shots)
        texts.append("\n\n".join(render(examples[i]) for i in chosen + [index]))
    return texts


def iter_task(spec: TaskSource) -> Iterator[tuple[str, str]]:
    """(origin, text) of every formatted example of the split (at most max_documents rows are read)."""
    from itertools import islice

    from calib_assets.sources.huggingface import _load

    loader = HuggingFaceSource(label=spec.label, path=spec.path, name=spec.name, split=spec.split,
                               data_files=spec.data_files, revision=spec.revision, streaming=spec.streaming)
    rows: list[dict[str, Any]] = list(islice(iter(_load(loader)), spec.max_documents))
    texts = format_examples(rows, spec.task, template=spec.template, shots=spec.shots, seed=spec.seed)
    return iter([(f"{spec.split}:{index}:{spec.template}", text) for index, text in enumerate(texts)])
