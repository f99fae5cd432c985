-- Per (variant, sample count), every discriminating criterion has one or more best and one or more worst
-- sources: each count adds up to at least the number of such criteria; no source is best or worst on more
-- criteria than discriminate, nor on a criterion when the sources all tie.
with per_setting as (
    select variant, n_samples, max(n_discriminating) as n_discriminating, sum(best_count) as best_total,
           sum(worst_count) as worst_total
    from {{ ref('mart_ranking') }}
    group by variant, n_samples
)
select variant, n_samples, n_discriminating, best_total as n from per_setting where best_total < n_discriminating
union all
select variant, n_samples, n_discriminating, worst_total from per_setting where worst_total < n_discriminating
union all
select variant, n_samples, n_discriminating, best_count
from {{ ref('mart_ranking') }}
where best_count > n_discriminating or worst_count > n_discriminating or n_discriminating > n_criteria
