-- One row per (calibrated variant, calibration set, task, metric, example): whether the checkpoint answered
-- the example right, as 1 or 0; typed.
select
    model,
    method,
    variant,
    calib,
    calibration_source,
    cast(n_samples as integer) as n_samples,
    task,
    metric,
    cast(example as integer) as example,
    cast(correct as integer) as correct
from {{ source('calib_assets', 'task_outcomes') }}
