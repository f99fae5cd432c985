{#-
  on-run-end of `dbt build` / `run` / `test`: replaces two warehouse tables with what this invocation did.
  - dbt_build_results: one row per node (model or test) with its status (success, error, skipped, pass,
    fail, warn), the model a test guards, the number of failing rows and dbt's message.
  - dbt_test_failures: up to var('failure_rows_kept') failing rows of every failed or warning test, as
    JSON, selected right after the build with the SQL the test ran.
-#}
{% macro record_build_results(results) %}
    {%- if execute and flags.WHICH in ('build', 'run', 'test') -%}
        {%- do run_query(
            "create or replace table " ~ target.schema ~ ".dbt_build_results (unique_id varchar, "
            ~ "resource_type varchar, name varchar, models varchar[], status varchar, failures bigint, "
            ~ "message varchar, recorded_at timestamptz default current_timestamp)") -%}
        {%- do run_query("create or replace table " ~ target.schema
                         ~ ".dbt_test_failures (test varchar, row_number bigint, failing_row json)") -%}
        {%- for result in results -%}
            {%- set node = result.node -%}
            {%- set read = [node.attached_node] if node.attached_node else node.depends_on.nodes -%}
            {%- set models = [] -%}
            {%- for unique_id in read if node.resource_type == 'test' -%}
                {%- do models.append(sql_string(unique_id.split('.') | last)) -%}
            {%- endfor -%}
            {%- set values = [
                    sql_string(node.unique_id), sql_string(node.resource_type), sql_string(node.name),
                    "[" ~ models | join(', ') ~ "]::varchar[]",
                    sql_string(result.status), result.failures if result.failures is not none else 'null',
                    sql_string(result.message or '')] -%}
            {%- do run_query("insert into " ~ target.schema ~ ".dbt_build_results (unique_id, resource_type, "
                             ~ "name, models, status, failures, message) values (" ~ values | join(', ') ~ ")") -%}
            {%- if node.resource_type == 'test' and result.status in ('fail', 'warn') -%}
                {%- do run_query("insert into " ~ target.schema ~ ".dbt_test_failures select "
                                 ~ sql_string(node.name) ~ ", row_number() over (), to_json(failing) from (\n"
                                 ~ node.compiled_code ~ "\n) as failing limit " ~ var('failure_rows_kept')) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{% endmacro %}

{% macro sql_string(text) -%}
    '{{ (text | string) | replace("'", "''") }}'
{%- endmacro %}
