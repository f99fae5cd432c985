-- Retention against the dense model (int_retention: value / dense value for accuracies, dense / value for
-- perplexity, 1 = as good as dense), aggregated over the calibration sets of a source (calibration-free
-- methods: source 'none', one row). Means of equal values are that value.
select
    model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind, uses_calibration,
    count(*) as n_sets,
    any_value(dense_value) as dense_value,
    {{ stable_mean('value') }} as mean_value,
    {{ stable_mean('retention') }} as mean_retention,
    min(retention) as min_retention,
    max(retention) as max_retention
from {{ ref('int_retention') }}
group by model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind, uses_calibration
