-- Which properties of the calibration data go with better compressed models? One row per
-- (model, method, variant, retention metric, descriptor): the Spearman rank correlation, over every
-- evaluated calibration set, between the set's descriptor and the compressed model's retention.
-- Retention (int_retention): the task average (mean acc over the tasks) relative to the dense model's, and
-- the dense model's perplexity relative to the compressed model's averaged over the held-out datasets
-- (1 = lossless).
-- Ties (values within float noise, macros/degenerate.sql) get average ranks, so rho is the Pearson
-- correlation of the ranks; NULL when either side does not vary.
with retention as (
    select model, method, variant, calib, 'task_accuracy' as retention_metric, retention
    from {{ ref('int_retention') }}
    where calib is not null and kind = 'task_average' and metric = 'acc' and dense_value > 0
    union all
    -- held-out text only (kind 'perplexity'): a task's own perplexity (e.g. the cloze's) is not a
    -- perplexity of text
    select model, method, variant, calib, 'perplexity' as retention_metric, avg(retention) as retention
    from {{ ref('int_retention') }}
    where calib is not null and kind = 'perplexity'
    group by model, method, variant, calib
),

descriptors as (
    unpivot (
        select
            model, calib, calibration_source,
            token_count, unique_tokens, type_token_ratio, zipf_exponent, ngram4_duplication, perplexity_mean,
            perplexity_std, eval_ngram4_overlap,
            cast(n_short + n_boilerplate + n_non_english + n_duplicate as double) as flagged_samples
        from {{ ref('stg_descriptors') }}
    )
    on token_count, unique_tokens, type_token_ratio, zipf_exponent, ngram4_duplication, perplexity_mean,
       perplexity_std, eval_ngram4_overlap, flagged_samples
    into name descriptor value descriptor_value
),

paired as (
    select r.model, r.method, r.variant, r.retention_metric, r.retention, d.descriptor, d.descriptor_value
    from retention as r
    join descriptors as d on d.model = r.model and d.calib = r.calib
    where r.retention is not null and d.descriptor_value is not null
),

descriptor_ties as (
    {{ tie_groups('paired', 'variant, retention_metric, descriptor', 'descriptor_value', 'descriptor_tie') }}
),

both_ties as (
    {{ tie_groups('descriptor_ties', 'variant, retention_metric, descriptor', 'retention', 'retention_tie') }}
),

ranked as (  -- average ranks: values within float noise of each other share the mean of their positions
    select
        *,
        rank() over (partition by variant, retention_metric, descriptor order by descriptor_tie)
            + (count(*) over (partition by variant, retention_metric, descriptor, descriptor_tie) - 1) / 2.0
            as descriptor_rank,
        rank() over (partition by variant, retention_metric, descriptor order by retention_tie)
            + (count(*) over (partition by variant, retention_metric, descriptor, retention_tie) - 1) / 2.0
            as retention_rank
    from both_ties
)

-- a descriptor (or retention) that does not vary has no rank correlation: NULL
select
    model,
    method,
    variant,
    retention_metric,
    descriptor,
    count(*) as n_sets,
    {{ stable_mean('retention') }} as mean_retention,
    case when count(distinct descriptor_tie) > 1 and count(distinct retention_tie) > 1
         then corr(descriptor_rank, retention_rank) end as spearman_rho
from ranked
group by model, method, variant, retention_metric, descriptor
