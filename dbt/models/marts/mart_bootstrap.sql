-- Percentile bootstrap confidence interval of the mean score over the calibration sets of one source, and
-- over all calibration sets of all sources (calibration_source '(all)'): each replicate draws n_sets sets
-- with replacement. Deterministic and reproducible outside SQL: draw d of replicate r takes the set numbered
-- int(first 15 hex digits of md5('seed:n_sets:r:d')) mod n_sets (sets numbered from 0 by calibration key),
-- so every score of a (variant, source) is resampled with the same sets. The interval is NULL for a single
-- set (nothing to resample), [mean, mean] when the sets score the same, and never leaves [min, max].
-- Vars: bootstrap_replicates, bootstrap_seed, bootstrap_confidence (macros/bootstrap.sql).
{%- set replicates = var('bootstrap_replicates') | int %}
with scores as (
    select model, method, variant, calib, calibration_source, n_samples, eval_dataset, metric, kind, value
    from {{ ref('int_set_scores') }}
    where uses_calibration
    union all
    select model, method, variant, calib, '(all)', n_samples, eval_dataset, metric, kind, value
    from {{ ref('int_set_scores') }}
    where uses_calibration
),

sets as (
    select
        *,
        dense_rank() over (order by variant, calibration_source, n_samples, eval_dataset, metric) as group_id,
        row_number() over (score order by calib) - 1 as set_index,
        count(*) over score as n_sets
    from scores
    window score as (partition by variant, calibration_source, n_samples, eval_dataset, metric)
),

intervals as (
    {{ bootstrap_intervals('sets', 'n_sets', 'set_index', 'value') }}
)

select
    any_value(model) as model,
    any_value(method) as method,
    any_value(variant) as variant,
    any_value(calibration_source) as calibration_source,
    any_value(n_samples) as n_samples,
    any_value(eval_dataset) as eval_dataset,
    any_value(metric) as metric,
    any_value(kind) as kind,
    count(*) as n_sets,
    {{ stable_mean('value') }} as mean_value,
    min(value) as min_value,
    max(value) as max_value,
    case when count(*) < 2 then null
         when {{ sets_differ('value') }} then greatest(any_value(intervals.ci_low), min(value))
         else {{ stable_mean('value') }} end as ci_low,
    case when count(*) < 2 then null
         when {{ sets_differ('value') }} then least(any_value(intervals.ci_high), max(value))
         else {{ stable_mean('value') }} end as ci_high,
    {{ replicates }} as replicates,
    {{ var('bootstrap_confidence') }} as confidence
from sets
join intervals using (group_id)
group by group_id
