{#
    `table` on PostgreSQL, replacing dbt's own for every table model of this project: a table that
    exists with the model's columns gets its rows replaced in place, in one transaction, so the
    views over it survive the build and readers never see it half-built (see in_place.sql).
    A new table, or a change of columns, takes dbt's own materialisation (a mart's old relation
    moved aside first, so the published view keeps reading it: move_aside_for_publish).
#}
{% materialization table, adapter='postgres' %}
    {%- set existing_relation = load_cached_relation(this) -%}
    {%- set target_relation = this.incorporate(type='table') -%}
    {%- if existing_relation is not none and existing_relation.is_table
        and can_replace_in_place(target_relation, sql) -%}
        {{ return(materialize_table_in_place(target_relation, existing_relation)) }}
    {%- endif -%}
    {%- do move_aside_for_publish(existing_relation) -%}
    {{ return(dbt.materialization_table_default()) }}
{% endmaterialization %}
