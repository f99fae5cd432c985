-- One row per described (model, calibration set); typed. The set-level measures are doubles (the type they
-- are ranked in), the counts of flagged samples integers.
select
    model,
    calib,
    calibration_source,
    cast(seed as integer) as seed,
    cast(n_samples as integer) as n_samples,
    source_kind,
    sampling,
    selection,
    calibration_fingerprint,
    cast(token_count as double) as token_count,
    cast(unique_tokens as double) as unique_tokens,
    cast(type_token_ratio as double) as type_token_ratio,
    cast(zipf_exponent as double) as zipf_exponent,
    cast(ngram4_duplication as double) as ngram4_duplication,
    cast(perplexity_mean as double) as perplexity_mean,
    cast(perplexity_std as double) as perplexity_std,
    cast(eval_ngram4_overlap as double) as eval_ngram4_overlap,
    cast(n_short as integer) as n_short,
    cast(n_boilerplate as integer) as n_boilerplate,
    cast(n_non_english as integer) as n_non_english,
    cast(n_duplicate as integer) as n_duplicate
from {{ source('calib_assets', 'set_descriptors') }}
