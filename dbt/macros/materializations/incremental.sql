{#
    `incremental` on PostgreSQL: dbt's own, except a full refresh (`--full-refresh`) of a table that
    exists with the model's columns. dbt would build a new table and `drop ... cascade` the old
    one, taking every view downstream with it; here the rows are replaced in place, in one
    transaction (see in_place.sql), and the table keeps its indexes. An incremental run is dbt's
    own: its strategy already changes the table in one transaction.
#}
{% materialization incremental, adapter='postgres' %}
    {%- set existing_relation = load_cached_relation(this) -%}
    {%- set target_relation = this.incorporate(type='table') -%}
    {%- if should_full_refresh() and existing_relation is not none and existing_relation.is_table
        and can_replace_in_place(target_relation, sql) -%}
        {{ return(materialize_table_in_place(target_relation, existing_relation)) }}
    {%- endif -%}
    {{ return(dbt.materialization_incremental_default()) }}
{% endmaterialization %}
