-- Does the spread across calibration sets exceed evaluation noise? Per (variant, calibration source, or
-- '(all)' for every set of every source, calibration-set size, task, metric): the best and the worst
-- calibration set by accuracy, compared on the same examples with a paired percentile bootstrap over
-- examples. Best: highest accuracy (ties: the lowest calib key); worst: lowest accuracy (ties: the highest
-- calib key), so two different sets whenever the group has two. Only examples that every set of the group
-- answered are compared. Deterministic and reproducible outside SQL: draw d of replicate r takes the
-- example numbered int(first 15 hex digits of md5('examples:seed:n_examples:r:d')) mod n_examples (examples
-- numbered from 0 in example order). The interval is of the mean paired difference best - worst; it
-- excludes 0 when the difference is larger than the examples' noise. Best and worst are chosen on the same
-- examples, so the test is optimistic for many sets (the largest of many differences). Vars:
-- bootstrap_replicates, bootstrap_seed, bootstrap_confidence (macros/bootstrap.sql).
{%- set replicates = var('bootstrap_replicates') | int %}
{%- set group_keys = 'variant, calibration_source, n_samples, task, metric' %}
with outcomes as (
    select model, method, variant, calib, calibration_source, n_samples, task, metric, example, correct
    from {{ ref('stg_outcomes') }}
    union all
    select model, method, variant, calib, '(all)', n_samples, task, metric, example, correct
    from {{ ref('stg_outcomes') }}
),

set_counts as (
    select {{ group_keys }}, count(distinct calib) as n_sets
    from outcomes
    group by all
),

shared_examples as (  -- answered by every set of the group
    select outcomes.{{ group_keys | replace(', ', ', outcomes.') }}, outcomes.example
    from outcomes
    join set_counts using ({{ group_keys }})
    group by all
    having count(distinct outcomes.calib) = any_value(set_counts.n_sets)
),

set_accuracy as (
    select outcomes.{{ group_keys | replace(', ', ', outcomes.') }}, outcomes.calib,
           any_value(outcomes.model) as model, any_value(outcomes.method) as method,
           avg(outcomes.correct) as accuracy
    from outcomes
    join shared_examples using ({{ group_keys }}, example)
    group by all
),

chosen as (
    select
        {{ group_keys }},
        any_value(model) as model,
        any_value(method) as method,
        count(*) as n_sets,
        arg_max(calib, [accuracy, -calib_rank]) as best_calib,
        arg_min(calib, [accuracy, -calib_rank]) as worst_calib
    from (select *, dense_rank() over (partition by {{ group_keys }} order by calib) as calib_rank from set_accuracy)
    group by all
    having count(*) >= 2
),

pairs as (
    select
        chosen.*,
        best.example,
        best.correct as best_correct,
        worst.correct as worst_correct,
        best.correct - worst.correct as difference
    from chosen
    join shared_examples using ({{ group_keys }})
    join outcomes as best
        on best.calib = chosen.best_calib and best.example = shared_examples.example
        and best.variant = chosen.variant and best.calibration_source = chosen.calibration_source
        and best.n_samples = chosen.n_samples and best.task = chosen.task and best.metric = chosen.metric
    join outcomes as worst
        on worst.calib = chosen.worst_calib and worst.example = shared_examples.example
        and worst.variant = chosen.variant and worst.calibration_source = chosen.calibration_source
        and worst.n_samples = chosen.n_samples and worst.task = chosen.task and worst.metric = chosen.metric
),

numbered as (
    select
        *,
        dense_rank() over (order by {{ group_keys }}) as group_id,
        row_number() over (partition by {{ group_keys }} order by example) - 1 as example_index,
        count(*) over (partition by {{ group_keys }}) as n_examples
    from pairs
),

intervals as (
    {{ bootstrap_intervals('numbered', 'n_examples', 'example_index', 'difference', salt='examples') }}
)

select
    any_value(model) as model,
    any_value(method) as method,
    variant,
    calibration_source,
    n_samples,
    task,
    metric,
    any_value(n_sets) as n_sets,
    count(*) as n_examples,
    any_value(best_calib) as best_calib,
    avg(best_correct) as best_value,
    any_value(worst_calib) as worst_calib,
    avg(worst_correct) as worst_value,
    avg(difference) as difference,
    sum(case when difference > 0 then 1 else 0 end) as best_only_correct,
    sum(case when difference < 0 then 1 else 0 end) as worst_only_correct,
    any_value(intervals.ci_low) as ci_low,
    any_value(intervals.ci_high) as ci_high,
    any_value(intervals.ci_low) > 0 as exceeds_noise,
    {{ replicates }} as replicates,
    {{ var('bootstrap_confidence') }} as confidence
from numbered
join intervals using (group_id)
group by variant, calibration_source, n_samples, task, metric
