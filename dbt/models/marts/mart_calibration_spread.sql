-- How much each metric moves across calibration sets: one row per
-- (model, method, calibration source, evaluation dataset, metric), statistics over the seeds.
select
    model,
    method,
    variant,
    calibration_source,
    eval_dataset,
    metric,
    count(*) as n_sets,
    avg(value) as mean_value,
    stddev_samp(value) as std_value,
    min(value) as min_value,
    max(value) as max_value,
    max(value) - min(value) as range_value
from {{ ref('stg_eval_results') }}
where uses_calibration
group by model, method, variant, calibration_source, eval_dataset, metric
