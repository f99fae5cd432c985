{% test ordered_interval(model, low, high, lower_bound=none, upper_bound=none) %}
-- Rows whose interval [low, high] is reversed or leaves [lower_bound, upper_bound] (columns, optional).
select *
from {{ model }}
where {{ low }} > {{ high }} + 1e-9 * abs({{ high }})
{%- if lower_bound %} or {{ low }} < {{ lower_bound }} - 1e-9 * abs({{ lower_bound }}) {%- endif %}
{%- if upper_bound %} or {{ high }} > {{ upper_bound }} + 1e-9 * abs({{ upper_bound }}) {%- endif %}
{% endtest %}
