-- One-way decomposition of the variance over all calibration sets of a (model, method, sample count,
-- score): between-source (sum over sources of n_s * (source mean - grand mean)^2) against within-source
-- (sum of (value - source mean)^2); ss_between + ss_within = ss_total. Degenerate groups: every sum is
-- exactly 0 when the sets do not differ, ss_between is 0 when the source means do not differ and
-- ss_within is 0 when no source's sets differ (float noise, macros/degenerate.sql). between_share is NULL
-- with one source or when ss_total is 0; mean squares are NULL when their degrees of freedom are 0 (one source, or one set
-- per source); F is NULL when either mean square is NULL or ms_within is 0 (the sets of each source agree).
with scores as (
    select
        model, method, variant, n_samples, eval_dataset, metric, kind, calibration_source, value,
        count(*) over score > 1
            and not {{ within_noise('max(value) over score - min(value) over score',
                                   'greatest(abs(min(value) over score), abs(max(value) over score))') }}
            as sets_differ,
        greatest(abs(min(value) over score), abs(max(value) over score)) as scale,
        avg(value) over score as grand_mean,
        var_samp(value) over score * (count(*) over score - 1) as ss_total
    from {{ ref('int_set_scores') }}
    where uses_calibration
    window score as (partition by variant, n_samples, eval_dataset, metric)
),

sources as (
    select
        model, method, variant, n_samples, eval_dataset, metric, kind, calibration_source,
        sets_differ, scale, grand_mean, ss_total,
        count(*) as n_sets,
        {{ stable_mean('value') }} as source_mean,
        case when {{ sets_differ('value') }} then var_samp(value) * (count(*) - 1) else 0 end as ss_within
    from scores
    group by model, method, variant, n_samples, eval_dataset, metric, kind, calibration_source,
             sets_differ, scale, grand_mean, ss_total
),

sums as (
    select
        model, method, variant, n_samples, eval_dataset, metric, kind, sets_differ,
        cast(sum(n_sets) as bigint) as n_sets,
        count(*) as n_sources,
        case when sets_differ then ss_total else 0 end as ss_total,
        case when sets_differ and not {{ within_noise('max(source_mean) - min(source_mean)', 'scale') }}
             then sum(n_sets * pow(source_mean - grand_mean, 2)) else 0 end as ss_between,
        case when sets_differ then sum(ss_within) else 0 end as ss_within
    from sources
    group by model, method, variant, n_samples, eval_dataset, metric, kind, sets_differ, scale, grand_mean, ss_total
),

degrees as (
    select
        *,
        n_sources - 1 as df_between,
        n_sets - n_sources as df_within,
        ss_between / nullif(n_sources - 1, 0) as ms_between,
        ss_within / nullif(n_sets - n_sources, 0) as ms_within
    from sums
)

select
    model, method, variant, n_samples, eval_dataset, metric, kind, sets_differ, n_sets, n_sources,
    ss_total, ss_between, ss_within, df_between, df_within,
    case when n_sources > 1 then ss_between / nullif(ss_total, 0) end as between_share,
    ms_between,
    ms_within,
    ms_between / nullif(ms_within, 0) as f_statistic
from degrees
