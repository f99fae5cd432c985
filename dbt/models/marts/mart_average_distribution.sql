-- Distribution of a summary score over ALL calibration sets of all sources, per (model, method) and
-- sample count (Figure 4): the task average (acc and acc_norm) and each held-out perplexity, with the
-- best-worst range and the calibration sets at both ends (ties broken by calibration key).
select
    model,
    method,
    variant,
    n_samples,
    eval_dataset,
    metric,
    kind,
    count(*) as n_sets,
    count(distinct calibration_source) as n_sources,
    avg(value) as mean_value,
    stddev_samp(value) as std_value,
    min(value) as min_value,
    quantile_cont(value, 0.25) as q1_value,
    median(value) as median_value,
    quantile_cont(value, 0.75) as q3_value,
    max(value) as max_value,
    max(value) - min(value) as range_value,
    case when bool_or(higher_is_better) then first(calib order by value desc, calib)
         else first(calib order by value, calib) end as best_calib,
    case when bool_or(higher_is_better) then first(calib order by value, calib)
         else first(calib order by value desc, calib) end as worst_calib
from {{ ref('int_set_scores') }}
where uses_calibration and kind in ('task_average', 'perplexity')
group by model, method, variant, n_samples, eval_dataset, metric, kind
