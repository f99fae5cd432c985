"""Task-formatted calibration data: templates by hand, in-context shots, and the corpus through datasets."""

from pathlib import Path

import pytest

from calib_assets.sources import build_corpus, parse_source_spec
from calib_assets.sources.tasks import format_examples

TASKS = Path(__file__).parent / "fixtures" / "tasks"
PIQA_ROWS = [{"goal": "How do I keep bread fresh?", "sol1": "Store it in a bread box.", "sol2": "Oven.", "label": 0},
             {"goal": "How to dry shoes?", "sol1": "Freezer.", "sol2": "Stuff them with newspaper.", "label": 1},
             {"goal": "Stop a squeaky door?", "sol1": "Oil the hinges.", "sol2": "Paint it.", "label": 0}]


def test_zero_shot_piqa_is_the_prompt_and_the_gold_answer():
    texts = format_examples(PIQA_ROWS, "piqa")
    assert texts[0] == "Question: How do I keep bread fresh?\nAnswer: Store it in a bread box."
    assert texts[1] == "Question: How to dry shoes?\nAnswer: Stuff them with newspaper."


def test_other_schemas_by_hand():
    arc = {"question": "Which gas?", "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]},
           "answerKey": "B"}
    assert format_examples([arc], "arc") == ["Question: Which gas?\nAnswer: carbon dioxide"]
    boolq = {"passage": "Cats are mammals.", "question": "are cats mammals", "answer": True}
    assert format_examples([boolq], "boolq") == ["Cats are mammals.\nQuestion: are cats mammals?\nAnswer: yes"]
    wino = {"sentence": "The cup fell off the table because _ was unstable.", "option1": "the cup",
            "option2": "the table", "answer": "2"}
    assert format_examples([wino], "winogrande") == ["The cup fell off the table because the table was unstable."]


def test_in_context_puts_distinct_other_examples_first_deterministically():
    zero = format_examples(PIQA_ROWS, "piqa")
    icl = format_examples(PIQA_ROWS, "piqa", template="in_context", shots=2, seed=5)
    assert icl == format_examples(PIQA_ROWS, "piqa", template="in_context", shots=2, seed=5)
    for index, text in enumerate(icl):
        blocks = text.split("\n\n")
        assert blocks[-1] == zero[index] and len(blocks) == 3
        assert zero[index] not in blocks[:-1] and len(set(blocks[:-1])) == 2


def test_a_row_of_another_schema_is_named():
    with pytest.raises(ValueError, match="row 0 does not fit task format 'arc'.*row fields"):
        format_examples(PIQA_ROWS, "arc")
    with pytest.raises(ValueError, match="shots=3 needs more than 3 rows"):
        format_examples(PIQA_ROWS, "piqa", template="in_context", shots=3)


def test_task_source_reads_a_training_split_through_datasets():
    spec = parse_source_spec({"kind": "task", "label": "piqa-icl", "task": "piqa", "path": "json",
                              "data_files": str(TASKS / "piqa_train.jsonl"), "template": "in_context", "shots": 2})
    corpus = build_corpus(spec, min_chars=20)
    assert len(corpus) == 5 and corpus["text"].str.count("Question:").eq(3).all()
    with pytest.raises(ValueError, match="'mmlu'"):
        parse_source_spec({"kind": "task", "label": "x", "task": "mmlu", "path": "json"})
