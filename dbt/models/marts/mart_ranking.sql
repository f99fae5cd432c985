-- Calibration sources ranked per (model, method, sample count). The criteria are each task's mean acc and
-- each held-out perplexity (mean over the source's calibration sets); sources whose means are within
-- float noise of each other tie. A criterion discriminates when its sources do not all tie (so never with
-- one source): best_count / worst_count = discriminating criteria on which the source is best / worst
-- (ties count for all tied sources). task_average_rank ranks the mean task average (NULL without tasks);
-- overall_rank orders sources by task_average_rank when there are tasks, else by their mean rank over the
-- criteria.
with criteria as (
    select model, method, variant, n_samples, calibration_source, kind, eval_dataset, metric,
        case when higher_is_better then mean_value else -mean_value end as goodness
    from {{ ref('int_spread') }}
    where (kind in ('task', 'task_average') and metric = 'acc') or kind = 'perplexity'
),

tied as (
    {{ tie_groups('criteria', 'variant, n_samples, eval_dataset, metric', 'goodness', 'goodness_tie') }}
),

ranked as (
    select
        *,
        rank() over (criterion order by goodness_tie desc) as rank_best_first,
        max(goodness_tie) over criterion > 1 as discriminates,
        goodness_tie = max(goodness_tie) over criterion as is_best,
        goodness_tie = 1 as is_worst,
        count(*) over criterion as n_sources
    from tied
    window criterion as (partition by variant, n_samples, eval_dataset, metric)
),

per_source as (
    select
        model, method, variant, n_samples, calibration_source,
        max(n_sources) as n_sources,
        count(*) filter (where kind <> 'task_average') as n_criteria,
        count(*) filter (where kind <> 'task_average' and discriminates) as n_discriminating,
        count(*) filter (where kind <> 'task_average' and discriminates and is_best) as best_count,
        count(*) filter (where kind <> 'task_average' and discriminates and is_worst) as worst_count,
        avg(rank_best_first) filter (where kind <> 'task_average') as mean_rank,
        max(rank_best_first) filter (where kind = 'task_average') as task_average_rank,
        max(goodness) filter (where kind = 'task_average') as task_average
    from ranked
    group by model, method, variant, n_samples, calibration_source
)

select
    *,
    rank() over (partition by variant, n_samples order by coalesce(task_average_rank, mean_rank)) as overall_rank
from per_source
