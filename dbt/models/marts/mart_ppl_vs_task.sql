-- Perplexity against task-accuracy variation (Table 2): the coefficient of variation (sample std / |mean|)
-- across the calibration sets of one source, for each held-out perplexity, each task and the task
-- average; on every row the largest perplexity and task CVs of the same (variant, source, sample count),
-- so that "perplexity hides task variance" reads as task_cv_max >> perplexity_cv_max. cv is 0 when the
-- sets score the same, NULL for a single set or a mean of 0 (an accuracy of 0 on every set).
with variation as (
    select
        model, method, variant, calibration_source, n_samples, kind, eval_dataset, metric,
        n_sets, mean_value, std_value,
        {{ coefficient_of_variation('std_value', 'mean_value', 'n_sets') }} as cv
    from {{ ref('int_spread') }}
    where kind in ('perplexity', 'task', 'task_average')
)

select
    *,
    max(cv) filter (where kind = 'perplexity') over setting as perplexity_cv_max,
    max(cv) filter (where kind = 'task') over setting as task_cv_max
from variation
window setting as (partition by variant, calibration_source, n_samples)
