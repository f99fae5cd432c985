-- The dense model and the calibration-free controls, once per model.
select model, method, variant, eval_dataset, metric, value, token_count
from {{ ref('stg_eval_results') }}
where not uses_calibration
