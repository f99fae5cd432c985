-- Retention against the dense model of the same base model, once for every mart that reports it: per
-- compressed model (calibration set) and score, value / dense value for accuracies (task, task average) and
-- dense value / value for perplexity, so 1 = as good as dense and lower is worse; NULL where the divisor is 0
-- (a dense accuracy of 0). Calibration-free methods have one row per score (calibration_source 'none'); the
-- dense model has none.
with dense as (
    select model, eval_dataset, metric, value as dense_value
    from {{ ref('int_set_scores') }}
    where method = 'dense'
)

select
    scores.model,
    scores.method,
    scores.variant,
    scores.calib,
    scores.calibration_source,
    scores.seed,
    scores.n_samples,
    scores.uses_calibration,
    scores.eval_dataset,
    scores.metric,
    scores.kind,
    scores.higher_is_better,
    scores.value,
    dense.dense_value,
    case when scores.higher_is_better then scores.value / nullif(dense.dense_value, 0)
         else dense.dense_value / nullif(scores.value, 0) end as retention
from {{ ref('int_set_scores') }} as scores
join dense using (model, eval_dataset, metric)
where scores.method <> 'dense' and scores.kind in ('perplexity', 'task', 'task_average')
