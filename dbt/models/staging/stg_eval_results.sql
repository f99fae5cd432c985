-- One row per evaluated (variant, calibration set, evaluation dataset, metric); typed and labelled.
-- n_samples (calibration examples in the set) is read when eval_results has it, else NULL.
{%- set results = source('calib_assets', 'eval_results') -%}
{%- set columns = adapter.get_columns_in_relation(results) | map(attribute='name') | map('lower') | list
    if execute else [] %}
with typed as (
    select
        model,
        method,
        method_config,
        variant,
        calib,
        coalesce(calibration_source, 'none') as calibration_source,
        cast(seed as integer) as seed,
        {% if 'n_samples' in columns -%} cast(n_samples as integer) {%- else -%} cast(null as integer) {%- endif %} as n_samples,
        calibration_source is not null as uses_calibration,
        calibration_fingerprint,
        checkpoint_fingerprint,
        eval_dataset,
        metric,
        cast(value as double) as value,
        cast(stderr as double) as stderr,
        cast(token_count as bigint) as token_count,
        cast(n_examples as bigint) as n_examples,
        code_version,
        run_id,
        evaluated_at
    from {{ results }}
),

tasks as (  -- an evaluation dataset is a task when some row reports an accuracy on it
    select distinct eval_dataset from typed where metric in ('acc', 'acc_norm')
)

select
    typed.*,
    case
        when metric in ('acc', 'acc_norm') then 'task'
        when metric = 'perplexity' and eval_dataset not in (select eval_dataset from tasks) then 'perplexity'
        when metric = 'kl_vs_dense' then 'divergence'
        when metric like '%\_flip\_share' escape '\' then 'flips'
        else 'other'
    end as kind,
    metric in ('acc', 'acc_norm') as higher_is_better
from typed
