{#
    Typed reads of Sage payload fields. Every cast is guarded: a value that breaks its type's rule
    becomes null instead of failing the statement (one company's impossible date used to fail the
    whole build, every company's marts with it), and the record lists the field in its
    `invalid_fields` column (macro sage_invalid_fields). The rules are the loader's
    (plugins/sage_sync/sage/schema.py and money.py), which quarantines such records at load; these
    guards keep a bad row already in raw from stopping anyone. tests/properties/test_bad_payloads.py
    holds both sides to the same verdict. Plain Jinja only (no dbt context), so that test can render
    them.

    Inside CASE the branches are evaluated in order, so a cast only ever meets text its guard passed.
    Character classes are spelled out: `\d` and `\s` may match non-ASCII digits and spaces, which
    the casts refuse.
#}

{#- Money: ASCII decimal notation (exponent allowed), blank = no amount, finite, |x| < 10^15, at most
    30 decimal places, at most 100 characters. `->>` of a JSON number is plain decimal text. -#}
{% macro sage_is_amount(text) -%}
    case
        when {{ text }} is null or {{ text }} ~ '^[ \t\n\r\f\v]*$' then true
        when length({{ text }}) > 100
            or {{ text }} !~ '^[ \t\n\r\f\v]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?[ \t\n\r\f\v]*$'
            then false
        else abs(cast({{ text }} as numeric)) < 1e15 and scale(cast({{ text }} as numeric)) <= 30
    end
{%- endmacro %}

{#- A real calendar date YYYY-MM-DD, years 0001-9999 (`text` already matched the pattern). -#}
{% macro sage_is_real_date(text) -%}
    case
        when substr({{ text }}, 1, 4) = '0000'
            or cast(substr({{ text }}, 6, 2) as integer) not between 1 and 12
            or cast(substr({{ text }}, 9, 2) as integer) < 1
            then false
        else cast(substr({{ text }}, 9, 2) as integer) <= extract(day from
            make_date(cast(substr({{ text }}, 1, 4) as integer), cast(substr({{ text }}, 6, 2) as integer), 1)
            + interval '1 month' - interval '1 day')
    end
{%- endmacro %}

{% macro sage_is_date(text) -%}
    case
        when {{ text }} is null or {{ text }} = '' then true
        when {{ text }} !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' then false
        else {{ sage_is_real_date(text) }}
    end
{%- endmacro %}

{#- Sage's ISO 8601 date-time with a UTC offset (2021-09-09T14:36:01Z). -#}
{% macro sage_is_timestamp(text) -%}
    case
        when {{ text }} is null or {{ text }} = '' then true
        when {{ text }} !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-4]):?[0-5][0-9])$'
            then false
        else {{ sage_is_real_date('left(' ~ text ~ ', 10)') }}
    end
{%- endmacro %}

{% macro sage_is_boolean(text) -%}
    coalesce({{ text }} in ('true', 'false', ''), true)
{%- endmacro %}

{#- A nominal code: at most 9 digits, so it fits an integer. -#}
{% macro sage_is_integer(text) -%}
    coalesce({{ text }} = '' or {{ text }} ~ '^[+-]?[0-9]{1,9}$', true)
{%- endmacro %}

{#- A link object {"id": "<non-blank string>", ...}; absent, null or "" = no link. -#}
{% macro sage_is_link(value) -%}
    case
        when {{ value }} is null or jsonb_typeof({{ value }}) = 'null' or {{ value }} = '""'::jsonb then true
        when jsonb_typeof({{ value }}) <> 'object' or jsonb_typeof({{ value }} -> 'id') is distinct from 'string'
            then false
        else ({{ value }} ->> 'id') ~ '[^ \t\n\r\f\v]'
    end
{%- endmacro %}

{#- Whether `field` of `json_column` keeps the rule of `field_type` (sage_sync.sage.schema). -#}
{% macro sage_is_valid(field_type, json_column, field) -%}
    {%- set text = json_column ~ " ->> '" ~ field ~ "'" -%}
    {%- if field_type == 'amount' -%}{{ sage_is_amount(text) }}
    {%- elif field_type == 'date' -%}{{ sage_is_date(text) }}
    {%- elif field_type == 'timestamp' -%}{{ sage_is_timestamp(text) }}
    {%- elif field_type == 'boolean' -%}{{ sage_is_boolean(text) }}
    {%- elif field_type == 'integer' -%}{{ sage_is_integer(text) }}
    {%- elif field_type == 'link' -%}{{ sage_is_link(json_column ~ " -> '" ~ field ~ "'") }}
    {%- else -%}{{ unknown_sage_field_type(field_type) }}
    {%- endif -%}
{%- endmacro %}

{#
    Whether the array `line_field` of `json_column` is valid: absent or null, or an array of
    objects whose ids (when present) are distinct non-blank strings and whose `line_fields`
    ((field, type) pairs) keep their rules.
#}
{% macro sage_lines_are_valid(json_column, line_field, line_fields) -%}
    {%- set lines = json_column ~ " -> '" ~ line_field ~ "'" -%}
    case
        when {{ lines }} is null or jsonb_typeof({{ lines }}) = 'null' then true
        when jsonb_typeof({{ lines }}) <> 'array' then false
        else not exists (
            select
            from jsonb_array_elements({{ lines }}) as checked_lines (line)
            where jsonb_typeof(checked_lines.line) <> 'object'
                or jsonb_typeof(checked_lines.line -> 'id') not in ('null', 'string')
                or (checked_lines.line ->> 'id') !~ '[^ \t\n\r\f\v]'
            {%- for field, field_type in line_fields %}
                or not {{ sage_is_valid(field_type, 'checked_lines.line', field) }}
            {%- endfor %}
        ) and (
            select count(checked_lines.line ->> 'id') = count(distinct checked_lines.line ->> 'id')
            from jsonb_array_elements({{ lines }}) as checked_lines (line)
        )
    end
{%- endmacro %}

{#- Sage sends money as a decimal string and sometimes as a JSON number; text -> numeric is exact. -#}
{% macro sage_amount(json_column, field) -%}
    {%- set text = json_column ~ " ->> '" ~ field ~ "'" -%}
    case
        when {{ text }} ~ '^[ \t\n\r\f\v]*$' then null
        when {{ sage_is_amount(text) }} then cast({{ text }} as numeric)
    end
{%- endmacro %}

{# The `id` of a link object such as {"id": "GBP", "displayed_as": ..., "$path": ...}. #}
{% macro sage_link_id(json_column, field) -%}
    nullif({{ json_column }} -> '{{ field }}' ->> 'id', '')
{%- endmacro %}

{% macro sage_text(json_column, field) -%}
    nullif(trim({{ json_column }} ->> '{{ field }}'), '')
{%- endmacro %}

{% macro sage_date(json_column, field) -%}
    {%- set text = json_column ~ " ->> '" ~ field ~ "'" -%}
    case when {{ text }} <> '' and {{ sage_is_date(text) }} then cast({{ text }} as date) end
{%- endmacro %}

{% macro sage_timestamp(json_column, field) -%}
    {%- set text = json_column ~ " ->> '" ~ field ~ "'" -%}
    case when {{ text }} <> '' and {{ sage_is_timestamp(text) }} then cast({{ text }} as timestamptz) end
{%- endmacro %}

{% macro sage_boolean(json_column, field) -%}
    {%- set text = json_column ~ " ->> '" ~ field ~ "'" -%}
    case when {{ text }} in ('true', 'false') then cast({{ text }} as boolean) end
{%- endmacro %}

{% macro sage_integer(json_column, field) -%}
    {%- set text = json_column ~ " ->> '" ~ field ~ "'" -%}
    case when {{ text }} ~ '^[+-]?[0-9]{1,9}$' then cast({{ text }} as integer) end
{%- endmacro %}

{#- The number of elements of an array field; 0 when it is absent or not an array. -#}
{% macro sage_array_length(json_column, field) -%}
    case
        when jsonb_typeof({{ json_column }} -> '{{ field }}') = 'array'
            then jsonb_array_length({{ json_column }} -> '{{ field }}')
        else 0
    end
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
