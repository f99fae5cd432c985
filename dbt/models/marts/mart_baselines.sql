-- The dense model and the calibration-free controls, once per model (task average included).
select model, method, variant, eval_dataset, metric, kind, value
from {{ ref('int_set_scores') }}
where not uses_calibration
