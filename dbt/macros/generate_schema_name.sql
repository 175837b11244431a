{#
    dbt's own generate_schema_name_for_env semantics: a production target (var production_targets:
    `prod`, and `airflow`, the target cosmos builds with) writes the custom schemas as they are
    (staging -> sage_staging, marts -> sage_marts, published as views in analytics: macros/publish/);
    any other target prefixes them with its own schema (target dev -> dev_sage_staging,
    dev_sage_marts, dev_analytics), so a developer's or CI's build never writes over what analysts
    read. A model without a custom schema goes to the target's schema.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif target.name in var('production_targets', ['prod', 'airflow']) -%}
        {{ custom_schema_name | trim }}
    {%- else -%}
        {{ target.schema }}_{{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
