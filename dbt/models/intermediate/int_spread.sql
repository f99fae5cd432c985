-- How much each score moves across the calibration sets of one source: one row per (model, method,
-- calibration source, sample count, evaluation dataset, metric), statistics over the calibration sets
-- (seeds). Degenerate groups (one set, or sets that score the same) follow macros/degenerate.sql.
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
    {{ spread_statistics('value') }}
from {{ ref('int_set_scores') }}
where uses_calibration
group by model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind, higher_is_better
