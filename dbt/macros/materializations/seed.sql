{#-
    Seeds, refreshed in place. dbt's own full refresh of a seed drops its table, and with it every
    view that reads it (the emissions marts read the keyword rules and the line overrides), so an
    analyst's query during `dbt build --full-refresh` would find the mart gone. When the table's
    columns are the CSV's, truncate and refill it in the seed's transaction instead (readers wait
    for the commit and then see the new rows); a changed header still rebuilds the table.
-#}
{% macro postgres__reset_csv_table(model, full_refresh, old_relation, agate_table) %}
    {%- set existing = adapter.get_columns_in_relation(old_relation) | map(attribute='name') | list -%}
    {%- if full_refresh and existing != (agate_table.column_names | list) -%}
        {{ adapter.drop_relation(old_relation) }}
        {%- set sql = create_csv_table(model, agate_table) -%}
    {%- else -%}
        {{ adapter.truncate_relation(old_relation) }}
        {%- set sql = "truncate table " ~ old_relation.render() -%}
    {%- endif -%}
    {{ return(sql) }}
{% endmacro %}
