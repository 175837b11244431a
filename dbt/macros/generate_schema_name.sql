{#
    Custom schemas are used verbatim (staging -> sage_staging, marts -> analytics) instead of
    dbt's default "<target schema>_<custom schema>", so every environment writes the same schemas
    and the Airflow side can name them without knowing the target.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
