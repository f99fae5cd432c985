-- How much each score moves across the calibration sets of one source (the paper's Table 1 when
-- filtered to kind 'task' / 'task_average'): one row per (model, method, calibration source, sample
-- count, evaluation dataset, metric), statistics over the calibration sets (seeds). std is NULL for one set.
select
    model,
    method,
    variant,
    calibration_source,
    n_samples,
    eval_dataset,
    metric,
    kind,
    higher_is_better,
    count(*) as n_sets,
    avg(value) as mean_value,
    stddev_samp(value) as std_value,
    min(value) as min_value,
    max(value) as max_value,
    max(value) - min(value) as range_value
from {{ ref('int_set_scores') }}
where uses_calibration
group by model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind, higher_is_better
