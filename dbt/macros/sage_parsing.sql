{#
    Sage sends money as a decimal string and sometimes as a JSON number. `->>` yields the text of
    either, and text -> numeric is exact, so no value ever passes through a float.
#}
{% macro sage_amount(json_column, field) -%}
    cast(nullif(trim({{ json_column }} ->> '{{ field }}'), '') as numeric)
{%- endmacro %}

{# The `id` of a link object such as {"id": "GBP", "displayed_as": ..., "$path": ...}. #}
{% macro sage_link_id(json_column, field) -%}
    nullif({{ json_column }} -> '{{ field }}' ->> 'id', '')
{%- endmacro %}

{% macro sage_text(json_column, field) -%}
    nullif(trim({{ json_column }} ->> '{{ field }}'), '')
{%- endmacro %}

{% macro sage_date(json_column, field) -%}
    cast(nullif({{ json_column }} ->> '{{ field }}', '') as date)
{%- endmacro %}

{% macro sage_timestamp(json_column, field) -%}
    cast(nullif({{ json_column }} ->> '{{ field }}', '') as timestamptz)
{%- endmacro %}

{#
    Surrogate key in the manner of dbt_utils.generate_surrogate_key (no package: hub.getdbt.com is
    not reachable from every environment this runs in).
#}
{% macro surrogate_key(columns) -%}
    md5(
    {%- for column in columns %}
        coalesce(cast({{ column }} as text), '_null_')
        {%- if not loop.last %} || '-' ||{% endif %}
    {%- endfor %}
    )
{%- endmacro %}

{#
    Sage nominal codes are integers; UK users read them as 4 digits ('0030'). Codes above 9999
    (possible in renumbered charts) are kept whole rather than truncated by lpad.
#}
{% macro nominal_code_text(column) -%}
    case
        when {{ column }} between 0 and 9999 then lpad(cast({{ column }} as text), 4, '0')
        else cast({{ column }} as text)
    end
{%- endmacro %}
