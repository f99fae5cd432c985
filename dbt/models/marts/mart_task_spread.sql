-- Per-task spread within one calibration source (Figure 2): each task's accuracy statistics over the
-- source's calibration sets, and its sensitivity rank (1 = the task whose accuracy range is widest; ranges
-- within float noise of each other tie).
with spread as (
    select
        model, method, variant, calibration_source, n_samples, eval_dataset as task, metric,
        n_sets, sets_differ, mean_value, std_value, min_value, max_value, range_value
    from {{ ref('int_spread') }}
    where kind = 'task'
),

ranked as (
    {{ tie_groups('spread', 'variant, calibration_source, n_samples, metric', 'range_value', 'range_tie') }}
)

select
    * exclude (range_tie),
    rank() over (partition by variant, calibration_source, n_samples, metric order by range_tie desc)
        as sensitivity_rank
from ranked
