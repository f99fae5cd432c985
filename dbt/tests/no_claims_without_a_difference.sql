-- Groups whose calibration sets score the same (or that have one set) make no claim: zero range and std,
-- no best or worst set, no variance shares or F, a degenerate bootstrap interval.
select 'mart_spread' as mart, variant, eval_dataset, metric
from {{ ref('mart_spread') }}
where not sets_differ and (range_value <> 0 or coalesce(std_value, 0) <> 0 or mean_value <> min_value)
union all
select 'mart_averages', variant, eval_dataset, metric
from {{ ref('mart_averages') }}
where not sets_differ and (range_value <> 0 or best_calib is not null or worst_calib is not null)
union all
select 'mart_variance', variant, eval_dataset, metric
from {{ ref('mart_variance') }}
where not sets_differ and (ss_total <> 0 or ss_between <> 0 or ss_within <> 0 or between_share is not null
                           or f_statistic is not null)
union all
select 'mart_bootstrap', variant, eval_dataset, metric
from {{ ref('mart_bootstrap') }}
where (n_sets = 1 and (ci_low is not null or ci_high is not null))
   or (min_value = max_value and (ci_low <> min_value or ci_high <> min_value))
