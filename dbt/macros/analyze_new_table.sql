{#
    Post-hook: ANALYZE a table dbt just built if PostgreSQL has no statistics for it yet (a first
    build or a full refresh creates a new table). Without statistics the planner assumes a third
    of the rows pass `dbt_loaded_at > <watermark>` and the next incremental run scans the whole
    table instead of using the index; autovacuum would analyze it, but only some time later.
    Tables with statistics are left to autovacuum: the index gives the planner the newest value.
    Views render nothing, and dbt skips an empty hook.
#}
{% macro analyze_new_table() -%}
    {%- if config.get('materialized') in ('incremental', 'table') -%}
do $analyze$
begin
    if (select coalesce(last_analyze, last_autoanalyze) is null
        from pg_stat_user_tables where relid = '{{ this }}'::regclass) then
        analyze {{ this }};
    end if;
end
$analyze$
    {%- endif -%}
{%- endmacro %}
