"""Evaluation of dense and compressed models."""

from calib_assets.evaluation.compare import answer_flips, kl_from_logits, next_token_kl
from calib_assets.evaluation.harness import (
    PAPER_TASKS,
    HarnessResult,
    TaskSpec,
    evaluate_tasks,
    evaluate_tasks_detailed,
    upstream_yaml,
    write_local_override,
)
from calib_assets.evaluation.perplexity import PerplexityResult, heldout_token_stream, perplexity
from calib_assets.evaluation.tasks import (
    CLOZE,
    NEXT_SENTENCE,
    OfflineTask,
    TaskLeakError,
    build_cloze_task,
    build_next_sentence_task,
    check_heldout_only,
    heldout_rows,
    read_task_manifest,
    split_sentences,
    write_lm_eval_task,
)

__all__ = [
    "CLOZE",
    "NEXT_SENTENCE",
    "PAPER_TASKS",
    "HarnessResult",
    "OfflineTask",
    "PerplexityResult",
    "TaskSpec",
    "answer_flips",
    "build_cloze_task",
    "build_next_sentence_task",
    "TaskLeakError",
    "check_heldout_only",
    "evaluate_tasks",
    "evaluate_tasks_detailed",
    "heldout_rows",
    "heldout_token_stream",
    "kl_from_logits",
    "next_token_kl",
    "perplexity",
    "read_task_manifest",
    "split_sentences",
    "upstream_yaml",
    "write_lm_eval_task",
    "write_local_override",
]
