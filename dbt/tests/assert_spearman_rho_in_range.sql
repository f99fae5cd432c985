-- A rank correlation lies in [-1, 1] (NULL when a descriptor or the retention does not vary).
select *
from {{ ref('mart_descriptors') }}
where spearman_rho < -1.000001 or spearman_rho > 1.000001
