{#
    The typed fields (macro sage_schema, from plugins/sage_sync/sage/schema.py) of a record of
    `stream_name` whose value breaks its type's rule, comma-separated (null when the record is
    sound): the staging models read those fields as null, and this says why. Text, not an array:
    dbt unit tests cannot type an array column of a mocked input. The line array counts
    as one field: any bad line names it. The loader quarantines such records, so in raw they are
    rows that landed before it did; rpt_invalid_values lists them.
#}
{% macro sage_invalid_fields(stream_name, json_column) -%}
{%- set schema = sage_schema()[stream_name] -%}
    nullif(array_to_string(array[
        {%- for field, field_type in schema.fields %}
        case when not {{ sage_is_valid(field_type, json_column, field) }} then '{{ field }}' end,
        {%- endfor %}
        {%- if schema.line_field %}
        case when not {{ sage_lines_are_valid(json_column, schema.line_field, schema.line_fields) }}
            then '{{ schema.line_field }}' end,
        {%- endif %}
        cast(null as text)
    ], ', '), '')
{%- endmacro %}
