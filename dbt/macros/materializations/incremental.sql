{#
    `incremental` on PostgreSQL: dbt's own, except a full refresh (`--full-refresh`) of a table that
    exists with the model's columns. dbt would build a new table and `drop ... cascade` the old
    one, taking every view downstream with it; here the rows are replaced in place, in one
    transaction (see in_place.sql), and the table keeps its indexes. An incremental run is dbt's
    own: its strategy already changes the table in one transaction, which first creates the
    configured indexes the table lacks (a deploy that adds one to `indexes`: dbt's own incremental
    run never does, so it would wait for a full refresh, and a model that relies on it, like the
    skip scan of int_nominal_accounts_categorised, would scan the whole table meanwhile). A mart
    that dbt must rebuild is moved aside first (move_aside_for_publish).
#}
{% materialization incremental, adapter='postgres' %}
    {%- set existing_relation = load_cached_relation(this) -%}
    {%- set target_relation = this.incorporate(type='table') -%}
    {%- if should_full_refresh() and existing_relation is not none and existing_relation.is_table
        and can_replace_in_place(target_relation, sql) -%}
        {{ return(materialize_table_in_place(target_relation, existing_relation)) }}
    {%- endif -%}
    {%- if existing_relation is not none and existing_relation.is_table and not should_full_refresh() -%}
        {% do create_missing_indexes(target_relation) %}
    {%- elif existing_relation is not none -%}
        {#- dbt rebuilds it (a full refresh that changes columns, a view becoming a table) -#}
        {%- do move_aside_for_publish(existing_relation) -%}
    {%- endif -%}
    {{ return(dbt.materialization_incremental_default()) }}
{% endmaterialization %}
