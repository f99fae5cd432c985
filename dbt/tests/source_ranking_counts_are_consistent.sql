-- Per (variant, sample count), every criterion has exactly one or more best sources: the best counts add
-- up to at least the number of criteria, and no source is best or worst on more criteria than exist.
with per_setting as (
    select variant, n_samples, max(n_criteria) as n_criteria, sum(best_count) as best_total
    from {{ ref('mart_source_ranking') }}
    group by variant, n_samples
)
select * from per_setting where best_total < n_criteria
union all
select variant, n_samples, n_criteria, best_count
from {{ ref('mart_source_ranking') }}
where best_count > n_criteria or worst_count > n_criteria
