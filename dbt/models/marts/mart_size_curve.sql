-- The sample-count curve (Figure 3, from a quantity study: several n_samples per source): held-out
-- perplexity and the task average against the number of calibration examples, with their spread over
-- the calibration sets at each count, and the mean relative to the largest count of the same curve
-- (NULL where that mean is 0).
select
    model, method, variant, calibration_source, n_samples, eval_dataset, metric, kind,
    n_sets, sets_differ, mean_value, std_value, min_value, max_value, range_value,
    mean_value / nullif(last(mean_value) over (
        partition by variant, calibration_source, eval_dataset, metric order by n_samples
        rows between unbounded preceding and unbounded following), 0) as relative_to_largest
from {{ ref('int_spread') }}
where kind in ('perplexity', 'task_average')
