{#
    Write-audit-publish (dbt/macros/publish/): every table in the private marts schema carries a
    bookkeeping column, dbt_build_id, whose DEFAULT is the build that writes the row. An insert
    must leave it out so the default stamps the row; an incremental strategy builds its insert
    list from arg_dict["dest_columns"] (the target's columns, bookkeeping included), so every
    strategy passes that list through here. Accepts dbt Column objects or names.
#}
{% macro bookkeeping_column() -%}
    {{- return('dbt_build_id') -}}
{%- endmacro %}

{% macro published_columns(columns) -%}
    {%- set kept = [] -%}
    {%- for column in columns -%}
        {%- set name = column if column is string else column.name -%}
        {%- if (name | replace('"', '') | lower) != bookkeeping_column() -%}
            {%- do kept.append(column) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(kept) }}
{%- endmacro %}
