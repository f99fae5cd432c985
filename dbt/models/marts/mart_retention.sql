-- Retention against the dense model of the same base model: per calibration set, value / dense value for
-- accuracies (task, task average) and dense / value for perplexity, so 1 = as good as dense and lower is
-- worse (NULL where the dense accuracy is 0); aggregated over the calibration sets of a source
-- (calibration-free methods: source 'none', one row). Means of equal values are that value.
with dense as (
    select model, eval_dataset, metric, value as dense_value
    from {{ ref('int_set_scores') }}
    where method = 'dense'
),

retained as (
    select
        scores.*,
        dense.dense_value,
        case when scores.higher_is_better then scores.value / nullif(dense.dense_value, 0)
             else dense.dense_value / nullif(scores.value, 0) end as retention
    from {{ ref('int_set_scores') }} as scores
    join dense using (model, eval_dataset, metric)
    where scores.method <> 'dense' and scores.kind in ('perplexity', 'task', 'task_average')
)

select
    model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind, uses_calibration,
    count(*) as n_sets,
    any_value(dense_value) as dense_value,
    {{ stable_mean('value') }} as mean_value,
    {{ stable_mean('retention') }} as mean_retention,
    min(retention) as min_retention,
    max(retention) as max_retention
from retained
group by model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind, uses_calibration
