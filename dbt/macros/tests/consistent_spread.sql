{% test consistent_spread(model) %}
-- Spread statistics that contradict each other: a negative range, min > mean > max, or a sample std
-- above the range (impossible: the sample std of n >= 2 values is at most range / sqrt(2)).
select *
from {{ model }}
where range_value < 0
   or min_value > mean_value + 1e-9 * abs(mean_value)
   or mean_value > max_value + 1e-9 * abs(max_value)
   or coalesce(std_value, 0) > range_value + 1e-9
{% endtest %}
