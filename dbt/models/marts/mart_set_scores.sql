-- One row per calibration set and score (per-task accuracy, task average, held-out perplexity): the
-- points behind the per-task spread (Figure 2) and the distribution of the task average (Figure 4).
select
    model, method, variant, calib, calibration_source, seed, n_samples,
    eval_dataset, metric, kind, value, n_tasks
from {{ ref('int_set_scores') }}
where uses_calibration and kind in ('task', 'task_average', 'perplexity')
