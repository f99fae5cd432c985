-- Per-task spread within one calibration source (Figure 2): each task's accuracy statistics over the
-- source's calibration sets, and its sensitivity rank (1 = the task whose accuracy range is widest).
select
    model, method, variant, calibration_source, n_samples, eval_dataset as task, metric,
    n_sets, mean_value, std_value, min_value, max_value, range_value,
    rank() over (
        partition by variant, calibration_source, n_samples, metric order by range_value desc
    ) as sensitivity_rank
from {{ ref('mart_calibration_spread') }}
where kind = 'task'
