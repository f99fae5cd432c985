{#-
  Statistics on degenerate groups (every mart uses these, so that they agree):
  - Two scores of one group that differ by at most var('float_noise') times the group's largest magnitude
    are the same score: a spread that small is rounding error of the arithmetic (an average of nine equal
    values is not always that value), never a calibration effect.
  - A group whose scores are all the same (or that has one score) has mean = its value, std 0 (NULL for a
    single score), range 0, no sums of squares, and no best or worst member.
-#}

{% macro within_noise(difference, scale) -%}
    (abs({{ difference }}) <= {{ var('float_noise') }} * {{ scale }})
{%- endmacro %}

{% macro sets_differ(value) -%}
    (count(*) > 1 and not {{ within_noise('max(' ~ value ~ ') - min(' ~ value ~ ')',
                                          'greatest(abs(min(' ~ value ~ ')), abs(max(' ~ value ~ ')))') }})
{%- endmacro %}

{% macro stable_mean(value) -%}
    case when {{ sets_differ(value) }} then avg({{ value }}) else min({{ value }}) end
{%- endmacro %}

{% macro spread_statistics(value) -%}
    count(*) as n_sets,
    coalesce({{ sets_differ(value) }}, false) as sets_differ,
    {{ stable_mean(value) }} as mean_value,
    case when count(*) < 2 then null when {{ sets_differ(value) }} then stddev_samp({{ value }}) else 0 end
        as std_value,
    min({{ value }}) as min_value,
    max({{ value }}) as max_value,
    case when {{ sets_differ(value) }} then max({{ value }}) - min({{ value }}) else 0 end as range_value
{%- endmacro %}

{% macro coefficient_of_variation(std, mean, n_sets) -%}
    {#- std / |mean| of a spread_statistics group: 0 when its sets do not differ, NULL for a single set or a
        mean of 0. -#}
    case when {{ n_sets }} > 1 and {{ mean }} <> 0 then {{ std }} / abs({{ mean }}) end
{%- endmacro %}

{% macro tie_groups(relation, partition_by, value, name) -%}
    {#- `relation` plus column `name`: within each partition, values in ascending order numbered 1, 2, ...,
        a value within float noise of the one before it keeping that one's number. Ranks computed on it
        treat such values as equal. NULL values get NULL. -#}
    select
        * exclude ({{ name }}_starts),
        case when {{ value }} is not null then
            1 + sum({{ name }}_starts) over (partition by {{ partition_by }} order by {{ value }})
        end as {{ name }}
    from (
        select
            *,
            case when {{ value }} - lag({{ value }}) over ordered
                      > {{ var('float_noise') }} * greatest(abs({{ value }}), abs(lag({{ value }}) over ordered))
                 then 1 else 0 end as {{ name }}_starts
        from {{ relation }}
        window ordered as (partition by {{ partition_by }} order by {{ value }})
    )
{%- endmacro %}
