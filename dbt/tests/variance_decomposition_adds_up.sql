-- Between-source plus within-source sums of squares must give the total (one-way ANOVA identity),
-- and the between-source share must be a share.
select *
from {{ ref('mart_variance') }}
where abs(ss_between + ss_within - ss_total) > 1e-9 * greatest(1, ss_total)
   or between_share < -1e-12 or between_share > 1 + 1e-9
