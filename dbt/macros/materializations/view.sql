{#
    `view` on PostgreSQL: `create or replace view` when the view exists and keeps its columns (it
    may append some). That swaps the definition in one statement and keeps the view's identity, so
    the views that read it are not dropped. dbt's own materialisation renames the old view away
    and drops it with `cascade`, which drops every view downstream until their turn in the build.
    A new view, a view whose columns change, or a table becoming a view take dbt's own (a mart's
    old relation moved aside first: move_aside_for_publish).
#}
{% materialization view, adapter='postgres' %}
    {%- set existing_relation = load_cached_relation(this) -%}
    {%- set target_relation = this.incorporate(type='view') -%}
    {%- if existing_relation is none or not existing_relation.is_view
        or not can_replace_in_place(target_relation, sql, allow_appended_columns=true) -%}
        {%- do move_aside_for_publish(existing_relation) -%}
        {{ return(dbt.materialization_view_default()) }}
    {%- endif -%}
    {%- set grant_config = config.get('grants') -%}
    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}
    {% call statement('main') -%}
        {{ get_replace_view_sql(target_relation, sql) }}
    {%- endcall %}
    {% do apply_grants(target_relation, grant_config, should_revoke=should_revoke(existing_relation, full_refresh_mode=True)) %}
    {% do persist_docs(target_relation, model) %}
    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {{ adapter.commit() }}
    {{ run_hooks(post_hooks, inside_transaction=False) }}
    {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}
