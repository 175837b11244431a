{#
    The newest value of `column` in this incremental model's own table (minus `lookback`, an
    interval), rendered as a timestamptz literal; '-infinity' on a first or full-refresh build.

    Why a literal and not `where x > (select max(x) from this)`: PostgreSQL plans a subquery's
    value as unknown and assumes a third of the rows match, so it scans the whole (5M-row) table
    instead of using the index on `column`. With the value in the SQL the planner sees how few
    rows are new, and a daily run reads only those. A unit test gets the subquery (its `this` is a
    fixture, not a table the macro could query).
#}
{% macro incremental_watermark(column, lookback=none) -%}
    {%- if is_incremental() and model.resource_type == 'unit_test' -%}
        (select coalesce(
            max({{ column }}){% if lookback %} - interval '{{ lookback }}'{% endif %}, '-infinity'::timestamptz
        ) from {{ this }})
    {%- elif execute and is_incremental() -%}
        {%- set query -%}
            select cast(coalesce(
                max({{ column }}){% if lookback %} - interval '{{ lookback }}'{% endif %},
                '-infinity'::timestamptz
            ) as text) as watermark
            from {{ this }}
        {%- endset -%}
        {%- set watermark = run_query(query).columns[0].values()[0] -%}
        '{{ watermark }}'::timestamptz
    {%- else -%}
        '-infinity'::timestamptz
    {%- endif -%}
{%- endmacro %}
