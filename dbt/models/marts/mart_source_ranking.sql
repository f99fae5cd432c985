-- Calibration sources ranked per (model, method, sample count). The criteria are each task's mean acc and
-- each held-out perplexity (mean over the source's calibration sets): best_count / worst_count = criteria
-- on which the source is best / worst (ties count for all tied sources; worst only with >= 2 sources).
-- task_average_rank ranks the mean task average (NULL without tasks); overall_rank orders sources by
-- task_average_rank when there are tasks, else by their mean rank over the criteria.
with criteria as (
    select model, method, variant, n_samples, calibration_source, kind, eval_dataset, metric,
        case when higher_is_better then mean_value else -mean_value end as goodness
    from {{ ref('mart_calibration_spread') }}
    where (kind in ('task', 'task_average') and metric = 'acc') or kind = 'perplexity'
),

ranked as (
    select
        *,
        rank() over criterion_best as rank_best_first,
        rank() over criterion_worst as rank_worst_first,
        count(*) over (partition by variant, n_samples, eval_dataset, metric) as n_sources
    from criteria
    window
        criterion_best as (partition by variant, n_samples, eval_dataset, metric order by goodness desc),
        criterion_worst as (partition by variant, n_samples, eval_dataset, metric order by goodness)
),

per_source as (
    select
        model, method, variant, n_samples, calibration_source,
        max(n_sources) as n_sources,
        count(*) filter (where kind <> 'task_average') as n_criteria,
        count(*) filter (where kind <> 'task_average' and rank_best_first = 1) as best_count,
        count(*) filter (where kind <> 'task_average' and rank_worst_first = 1 and n_sources > 1) as worst_count,
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
