-- The spread over every calibration set of a source (all sample counts pooled), per variant: the held-out
-- perplexity averaged over the evaluation datasets of each set (eval_dataset 'perplexity_average', kind
-- 'perplexity_average') and each task's accuracy (kind 'task', metric acc). What `calib-assets run` and
-- `calib-assets findings` print first (calib_assets.runner.seed_spread_summary). Statistics and cv follow
-- macros/degenerate.sql, as in mart_spread and mart_ppl_vs_task.
with set_scores as (
    select
        model, method, variant, calibration_source, calib,
        'perplexity_average' as eval_dataset, 'perplexity' as metric, 'perplexity_average' as kind,
        avg(value) as value
    from {{ ref('int_set_scores') }}
    where uses_calibration and kind = 'perplexity'
    group by model, method, variant, calibration_source, calib
    union all
    select model, method, variant, calibration_source, calib, eval_dataset, metric, kind, value
    from {{ ref('int_set_scores') }}
    where uses_calibration and kind = 'task' and metric = 'acc'
),

source_sets as (  -- the sets of a (variant, source) with any of these scores
    select variant, calibration_source, count(distinct calib) as source_sets
    from set_scores
    group by variant, calibration_source
),

spread as (
    select
        model, method, variant, calibration_source, eval_dataset, metric, kind,
        {{ spread_statistics('value') }}
    from set_scores
    group by model, method, variant, calibration_source, eval_dataset, metric, kind
)

select
    spread.*,
    {{ coefficient_of_variation('std_value', 'mean_value', 'n_sets') }} as cv,
    source_sets.source_sets
from spread
join source_sets using (variant, calibration_source)
