-- Distribution of a summary score over ALL calibration sets of all sources, per (model, method) and
-- sample count (Figure 4): the task average (acc and acc_norm) and each held-out perplexity, with the
-- best-worst range and the calibration sets at both ends (ties within float noise broken by calibration
-- key; both NULL when the sets do not differ).
with scores as (
    select
        model, method, variant, n_samples, eval_dataset, metric, kind, calibration_source, calib, value,
        case when higher_is_better then value else -value end as goodness
    from {{ ref('int_set_scores') }}
    where uses_calibration and kind in ('task_average', 'perplexity')
),

ranked as (
    select *, max(goodness_tie) over (partition by variant, n_samples, eval_dataset, metric) as top_tie
    from ({{ tie_groups('scores', 'variant, n_samples, eval_dataset, metric', 'goodness', 'goodness_tie') }})
)

select
    model,
    method,
    variant,
    n_samples,
    eval_dataset,
    metric,
    kind,
    {{ spread_statistics('value') }},
    count(distinct calibration_source) as n_sources,
    quantile_cont(value, 0.25) as q1_value,
    median(value) as median_value,
    quantile_cont(value, 0.75) as q3_value,
    case when {{ sets_differ('value') }} then min(calib) filter (where goodness_tie = top_tie) end as best_calib,
    case when {{ sets_differ('value') }} then min(calib) filter (where goodness_tie = 1) end as worst_calib
from ranked
group by model, method, variant, n_samples, eval_dataset, metric, kind
