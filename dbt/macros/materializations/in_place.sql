{#
    Helpers of the in-place materialisations (table.sql, view.sql, incremental.sql here).

    Why: dbt's own table and view materialisations, and an incremental model's full refresh,
    build a new relation, rename the old one away and `drop ... cascade` it. In PostgreSQL a view
    depends on the relations it reads by identity, not by name, so that cascade drops every view
    downstream (the fact, the quarter marts, the exception lists), and they stay missing until
    their own turn in the build. Analysts query at any hour: here a relation whose columns are
    unchanged is replaced in place instead, in one transaction, so a reader sees either the old
    rows or the new ones and every mart always exists. Only a change of columns (a deploy) takes
    dbt's own rebuild.
#}

{#- Each column of a relation as [quoted name, exact type with modifiers], in order; [] when the
    relation does not exist. Read from the catalog, so it also sees temporary relations. -#}
{% macro relation_columns(relation_name) -%}
    {%- set query -%}
        select
            quote_ident(attribute.attname) as column_name,
            format_type(attribute.atttypid, attribute.atttypmod) as column_type
        from pg_attribute as attribute
        where attribute.attrelid = to_regclass('{{ relation_name }}')
            and attribute.attnum > 0
            and not attribute.attisdropped
        order by attribute.attnum
    {%- endset -%}
    {%- set columns = [] -%}
    {%- for row in run_query(query).rows -%}
        {%- do columns.append([row[0], row[1]]) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}

{#- The columns the model's SQL produces, typed exactly as a table or view built from it would be:
    a temporary view of the SQL, read and dropped (costs a parse and plan, reads no row). -#}
{% macro query_columns(sql) -%}
    {%- set probe = 'dbt_in_place_columns_probe' -%}
    {%- do run_query('drop view if exists pg_temp.' ~ probe) -%}
    {%- do run_query('create temporary view ' ~ probe ~ ' as (' ~ sql ~ '\n)') -%}
    {%- set columns = relation_columns('pg_temp.' ~ probe) -%}
    {%- do run_query('drop view pg_temp.' ~ probe) -%}
    {{ return(columns) }}
{%- endmacro %}

{#- True when `relation` exists in the database with exactly the columns `sql` produces (for a view:
    the same columns first, since `create or replace view` may only append). A mart's bookkeeping
    column (published_columns) is not the model's and is left out of the comparison. -#}
{% macro can_replace_in_place(relation, sql, allow_appended_columns=false) -%}
    {%- set current = [] -%}
    {%- for column in relation_columns(relation.include(database=false)) if column[0] != bookkeeping_column() -%}
        {%- do current.append(column) -%}
    {%- endfor -%}
    {%- if current | length == 0 -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set wanted = query_columns(sql) -%}
    {%- set compatible = (wanted[:current | length] == current) if allow_appended_columns else (wanted == current) -%}
    {%- if not compatible -%}
        {{ log("The columns of " ~ relation ~ " change: dbt rebuilds it, and the views over it until this run re-creates them", info=true) }}
    {%- endif -%}
    {{ return(compatible) }}
{%- endmacro %}

{#- Replace every row of `relation` with the rows of `sql`, in the current transaction. DELETE, not
    TRUNCATE: TRUNCATE would block every reader until commit and is not MVCC-safe (a reader with
    an older snapshot would see the table empty); DELETE lets readers go on with the old rows.
    ANALYZE, because the planner's statistics described the old rows. A mart's bookkeeping column
    takes its default (published_columns), and its trigger retires the deleted rows. -#}
{% macro replace_rows_in_place_sql(relation, sql) -%}
    {%- set columns = published_columns(relation_columns(relation.include(database=false)) | map('first') | list) | join(', ') -%}
    delete from {{ relation }};

    insert into {{ relation }} ({{ columns }})
    select {{ columns }}
    from (
        {{ sql }}
    ) as model_rows;

    analyze {{ relation }};
{%- endmacro %}

{#- Create the configured indexes the relation does not have yet (same columns in the same order,
    uniqueness and method). dbt names every index with a timestamp, so creating them all again on
    each in-place build would pile up duplicates. -#}
{% macro create_missing_indexes(relation) -%}
    {%- set existing_query -%}
        select
            array_to_string(array(
                select attribute.attname
                from unnest(index_info.indkey) with ordinality as keys (attnum, position)
                inner join pg_attribute as attribute
                    on attribute.attrelid = index_info.indrelid
                    and attribute.attnum = keys.attnum
                order by keys.position
            ), ',') || '|' || index_info.indisunique || '|' || access_method.amname
        from pg_index as index_info
        inner join pg_class as index_class
            on index_info.indexrelid = index_class.oid
        inner join pg_am as access_method
            on index_class.relam = access_method.oid
        where index_info.indrelid = to_regclass('{{ relation.include(database=false) }}')
    {%- endset -%}
    {%- set existing = run_query(existing_query).columns[0].values() | list -%}
    {%- for index_dict in config.get('indexes', default=[]) -%}
        {%- set index = adapter.parse_index(index_dict) -%}
        {%- set wanted = index.columns | join(',') ~ '|' ~ (index.unique | lower) ~ '|' ~ (index.type or 'btree') | lower -%}
        {%- if wanted not in existing -%}
            {%- do run_query(get_create_index_sql(relation, index_dict)) -%}
        {%- endif -%}
    {%- endfor -%}
{%- endmacro %}

{#- The in-place build of a table (a table model, or an incremental model's full refresh): hooks,
    rows replaced, missing indexes, grants and docs, all in one transaction. -#}
{% macro materialize_table_in_place(target_relation, existing_relation) -%}
    {%- set grant_config = config.get('grants') -%}
    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}

    {% call statement('main') -%}
        {{ replace_rows_in_place_sql(target_relation, sql) }}
    {%- endcall %}
    {% do create_missing_indexes(target_relation) %}

    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {% do apply_grants(target_relation, grant_config, should_revoke=should_revoke(existing_relation, full_refresh_mode=True)) %}
    {% do persist_docs(target_relation, model) %}
    {{ adapter.commit() }}
    {{ run_hooks(post_hooks, inside_transaction=False) }}
    {{ return({'relations': [target_relation]}) }}
{%- endmacro %}

{#- Before dbt's own materialisation replaces a mart it cannot refill in place (its columns change,
    or a view becomes a table or back), move the old relation aside as `<name>__old_<invocation>`,
    its retired rows with it: dbt would drop it with `cascade`, taking the published view in
    `analytics` along until the build publishes. Renamed, it keeps serving that view (PostgreSQL
    binds a view to relations, not names) until publish points the view at the new one; publish's
    clean-up drops it. Other relations render nothing and take dbt's own path as before. -#}
{% macro move_aside_for_publish(existing_relation) -%}
    {%- if existing_relation is none or not is_private_mart() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set aside = existing_relation.incorporate(path={'identifier': existing_relation.identifier ~ '__old_' ~ invocation_id[:8]}) -%}
    {%- do adapter.rename_relation(existing_relation, aside) -%}
    {%- if existing_relation.is_table -%}
        {%- do run_query('alter table if exists ' ~ adapter.quote(existing_relation.schema) ~ '.'
            ~ adapter.quote(existing_relation.identifier ~ '__retired') ~ ' rename to '
            ~ adapter.quote(aside.identifier ~ '__retired')) -%}
    {%- endif -%}
    {{ log("Moved " ~ existing_relation ~ " aside: it serves the published view until this build publishes", info=true) }}
{%- endmacro %}
