-- Every score of every evaluated model (compressed per calibration set, dense, calibration-free), plus
-- the task average: the mean of one accuracy metric (acc, or acc_norm) over the tasks evaluated for that
-- (variant, calibration set), as eval_dataset 'task_average' with kind 'task_average'.
with results as (
    select
        model, method, variant, calib, calibration_source, seed, n_samples, uses_calibration,
        eval_dataset, metric, kind, higher_is_better, value, cast(null as bigint) as n_tasks
    from {{ ref('stg_eval_results') }}
),

task_average as (
    select
        model, method, variant, calib, calibration_source, seed, n_samples, uses_calibration,
        'task_average' as eval_dataset, metric, 'task_average' as kind, true as higher_is_better,
        avg(value) as value, count(*) as n_tasks
    from results
    where kind = 'task'
    group by model, method, variant, calib, calibration_source, seed, n_samples, uses_calibration, metric
)

select * from results
union all
select * from task_average
