-- One-way decomposition of the variance over all calibration sets of a (model, method, sample count,
-- score): between-source (sum over sources of n_s * (source mean - grand mean)^2) against within-source
-- (sum of (value - source mean)^2); ss_between + ss_within = ss_total. Mean squares and F are NULL when
-- their degrees of freedom are 0 (one source, or one set per source); between_share is NULL when all
-- sets score the same.
with sets as (
    select
        model, method, variant, n_samples, eval_dataset, metric, kind, calibration_source, value,
        avg(value) over (partition by variant, n_samples, eval_dataset, metric, calibration_source) as source_mean,
        avg(value) over (partition by variant, n_samples, eval_dataset, metric) as grand_mean
    from {{ ref('int_set_scores') }}
    where uses_calibration
),

sums as (
    select
        model, method, variant, n_samples, eval_dataset, metric, kind,
        count(*) as n_sets,
        count(distinct calibration_source) as n_sources,
        sum(pow(value - grand_mean, 2)) as ss_total,
        sum(pow(source_mean - grand_mean, 2)) as ss_between,
        sum(pow(value - source_mean, 2)) as ss_within
    from sets
    group by model, method, variant, n_samples, eval_dataset, metric, kind
)

select
    *,
    n_sources - 1 as df_between,
    n_sets - n_sources as df_within,
    ss_between / nullif(ss_total, 0) as between_share,
    ss_between / nullif(n_sources - 1, 0) as ms_between,
    ss_within / nullif(n_sets - n_sources, 0) as ms_within,
    (ss_between / nullif(n_sources - 1, 0)) / nullif(ss_within / nullif(n_sets - n_sources, 0), 0) as f_statistic
from sums
