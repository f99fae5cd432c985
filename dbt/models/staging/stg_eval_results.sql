-- One row per evaluated (variant, calibration set, evaluation dataset, metric); typed and labelled.
select
    model,
    method,
    method_config,
    variant,
    calib,
    coalesce(calibration_source, 'none') as calibration_source,
    cast(seed as integer) as seed,
    calibration_source is not null as uses_calibration,
    calibration_fingerprint,
    checkpoint_fingerprint,
    eval_dataset,
    metric,
    cast(value as double) as value,
    cast(stderr as double) as stderr,
    cast(token_count as bigint) as token_count,
    cast(n_examples as bigint) as n_examples,
    code_version,
    run_id,
    evaluated_at
from {{ source('calib_assets', 'eval_results') }}
