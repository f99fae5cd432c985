-- Which properties of the calibration data go with better compressed models? One row per
-- (model, method, variant, retention metric, descriptor): the Spearman rank correlation, over every
-- evaluated calibration set, between the set's descriptor and the compressed model's retention.
-- Retention: the mean task accuracy (`acc`) relative to the dense model's, and the dense model's
-- perplexity relative to the compressed model's, averaged over the evaluation datasets (1 = lossless).
-- Ties (values within float noise, macros/degenerate.sql) get average ranks, so rho is the Pearson
-- correlation of the ranks; NULL when either side does not vary.
with results as (
    select model, method, variant, calib, eval_dataset, metric, value
    from {{ ref('stg_eval_results') }}
),

task_means as (
    select model, method, variant, calib, avg(value) as value
    from results
    where metric = 'acc'
    group by model, method, variant, calib
),

retention as (
    select t.model, t.method, t.variant, t.calib, 'task_accuracy' as retention_metric,
           t.value / dense.value as retention
    from task_means as t
    join task_means as dense on dense.model = t.model and dense.method = 'dense'
    where t.calib is not null and dense.value > 0
    union all
    select p.model, p.method, p.variant, p.calib, 'perplexity' as retention_metric,
           avg(dense.value / p.value) as retention
    from results as p
    join results as dense
        on dense.model = p.model and dense.method = 'dense' and dense.eval_dataset = p.eval_dataset
        and dense.metric = 'perplexity'
    where p.metric = 'perplexity' and p.calib is not null
        -- held-out text only: a task's own perplexity (e.g. the cloze's) is not a perplexity of text
        and p.eval_dataset not in (select eval_dataset from results where metric in ('acc', 'acc_norm'))
    group by p.model, p.method, p.variant, p.calib
),

descriptors as (
    unpivot (
        select
            model, calib, calibration_source,
            cast(token_count as double) as token_count,
            cast(unique_tokens as double) as unique_tokens,
            cast(type_token_ratio as double) as type_token_ratio,
            cast(zipf_exponent as double) as zipf_exponent,
            cast(ngram4_duplication as double) as ngram4_duplication,
            cast(perplexity_mean as double) as perplexity_mean,
            cast(perplexity_std as double) as perplexity_std,
            cast(eval_ngram4_overlap as double) as eval_ngram4_overlap,
            cast(n_short + n_boilerplate + n_non_english + n_duplicate as double) as flagged_samples
        from {{ source('calib_descriptors', 'calibration_descriptors') }}
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
