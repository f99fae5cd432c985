{#- The deterministic percentile bootstrap of mart_bootstrap and mart_paired_test. -#}

{#- Per group_id of the relation `items` (one row per item: group_id, `n_column` = the group's item count,
    `index_column` = the item's number from 0, `value`): ci_low and ci_high, the (1 - bootstrap_confidence)/2
    and 1 - that quantiles of the means of bootstrap_replicates replicates. Replicate r of a group of n
    items draws n items with replacement, draw d taking the item numbered
    int(first 15 hex digits of md5('[salt:]seed:n:r:d')) mod n: the draws depend on n only, so groups of a
    size are resampled alike, and Python reproduces them (hashlib.md5). Vars: bootstrap_replicates,
    bootstrap_seed, bootstrap_confidence. -#}
{% macro bootstrap_intervals(items, n_column, index_column, value, salt=none) %}
    {%- set alpha = (1 - var('bootstrap_confidence') | float) / 2 %}
    with counts as (
        select distinct {{ n_column }} as n from {{ items }}
    ),

    draws as (
        select
            counts.n,
            replicate,
            cast('0x' || left(md5(concat_ws(':', {% if salt %}'{{ salt }}', {% endif %}{{ var('bootstrap_seed') | int }},
                                             counts.n, replicate, draw)), 15) as bigint) % counts.n as item
        from counts
        cross join range({{ var('bootstrap_replicates') | int }}) as replicates(replicate)
        cross join lateral (select unnest(range(counts.n)) as draw)
    ),

    replicate_means as (
        select items.group_id, draws.replicate, avg(items.{{ value }}) as replicate_mean
        from draws
        join {{ items }} as items on items.{{ n_column }} = draws.n and items.{{ index_column }} = draws.item
        group by items.group_id, draws.replicate
    )

    select
        group_id,
        quantile_cont(replicate_mean, {{ alpha }}) as ci_low,
        quantile_cont(replicate_mean, {{ 1 - alpha }}) as ci_high
    from replicate_means
    group by group_id
{% endmacro %}
