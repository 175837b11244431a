{#
    dbt's own incremental strategies on PostgreSQL, with the insert (and update) column lists
    passed through published_columns: the target's columns include the bookkeeping column
    dbt_build_id (build_bookkeeping.sql), which the model's SQL does not produce and which its
    DEFAULT fills. Deletes stay plain DELETEs: the trigger retires the rows.
#}
{% macro postgres__get_delete_insert_merge_sql(target, source, unique_key, dest_columns, incremental_predicates) -%}
    {{ return(default__get_delete_insert_merge_sql(target, source, unique_key, published_columns(dest_columns), incremental_predicates)) }}
{%- endmacro %}

{% macro postgres__get_incremental_append_sql(arg_dict) -%}
    {%- do arg_dict.update({'dest_columns': published_columns(arg_dict['dest_columns'])}) -%}
    {{ return(default__get_incremental_append_sql(arg_dict)) }}
{%- endmacro %}

{% macro postgres__get_merge_sql(target, source, unique_key, dest_columns, incremental_predicates=none) -%}
    {{ return(default__get_merge_sql(target, source, unique_key, published_columns(dest_columns), incremental_predicates)) }}
{%- endmacro %}
