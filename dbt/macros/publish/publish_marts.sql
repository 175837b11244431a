{#
    Publish (on-run-end): the marts a reader sees change together, once a build has succeeded.

    Readers query `analytics.<mart>` (build_bookkeeping.sql): for a table, a view of the rows of
    the published build (`dbt_published`), read in the reader's own snapshot; for a mart that is
    still a dbt view, a view of it (live: it shows its inputs as they are, mid-build included).
    Publishing is ONE transaction: the published build id moves, and a view whose columns changed
    (a deploy) or is missing is (re)created. A reader's statement, or its REPEATABLE READ
    transaction, sees the marts as one build left them.

    A build publishes only when
    - nothing it ran errored, failed or was skipped (a failing test publishes nothing: readers
      keep the previous build, and the next good build supersedes this one's rows);
    - no other build wrote a mart while it ran (two racing builds each refuse; the next lone build
      publishes);
    - every mart written since the last publish by a build that did not publish (failed, killed)
      was rebuilt by this one: `dbt build --select one_model` or `dbt seed` after a failed build
      does not publish the rest of the failed build's writes.
    Then clean-up, in its own transaction: retired rows no reader can need any more (retired by a
    build <= the published one; DELETE, so a reader whose snapshot predates the publish still sees
    them) and the relations a deploy replaced (`<mart>__old_<invocation>`), once nothing reads them.
#}

{% macro publish_functions() -%}
    {%- set private = adapter.quote(private_marts_schema()) -%}
create or replace function {{ private }}.publish_build(
    invocation text, marts text[], built text[], failed text[], published_schema text, reader_role text
) returns text
language plpgsql as $publish$
declare
    private text := {{ dbt.string_literal(private_marts_schema()) }};
    build record;
    published bigint;
    found_marts text[];
    mart text;
    kind "char";
    listed text;
    body text;
    signature text;
    target regclass;
    pass integer;
    changed boolean;
begin
    perform pg_advisory_xact_lock(hashtext(private || '.publish'));
    select * into build from {{ private }}.dbt_builds where invocation_id = invocation;
    if build is null then
        return 'not published: this invocation has no build row';
    end if;
    select coalesce(max(build_id), 0) into published from {{ private }}.dbt_published;
    if cardinality(failed) > 0 then
        update {{ private }}.dbt_builds set status = 'failed', ended_at = clock_timestamp(),
            outcome = 'failed: ' || array_to_string(failed, ', ')
        where build_id = build.build_id;
        return format('build %s not published: %s did not succeed (readers keep build %s)',
            build.build_id, array_to_string(failed[1:5], ', '), published);
    end if;
    if build.build_id < published then
        found_marts := array[format('build %s was published while this one ran', published)];
    else
        select array_agg(distinct format('%s (build %s)', written.mart, written.build_id)) into found_marts
        from {{ private }}.dbt_build_marts as written
        where written.build_id <> build.build_id and written.written_at >= build.started_at;
    end if;
    if found_marts is not null then
        update {{ private }}.dbt_builds set status = 'not published', ended_at = clock_timestamp(),
            outcome = 'another build wrote marts meanwhile: ' || array_to_string(found_marts, ', ')
        where build_id = build.build_id;
        return format('build %s not published: another build wrote %s while it ran (readers keep build %s; '
            'the next build publishes)', build.build_id, array_to_string(found_marts[1:5], ', '), published);
    end if;
    select array_agg(distinct written.mart order by written.mart) into found_marts
    from {{ private }}.dbt_build_marts as written
    where written.build_id > published and written.build_id <> build.build_id
        and not (written.mart = any(built));
    if found_marts is not null then
        update {{ private }}.dbt_builds set status = 'not published', ended_at = clock_timestamp(),
            outcome = 'marts of an unpublished build not rebuilt: ' || array_to_string(found_marts, ', ')
        where build_id = build.build_id;
        return format('build %s not published: %s were written by a build that was not published, and this '
            'invocation did not rebuild them (readers keep build %s; a full `dbt build` publishes)',
            build.build_id, array_to_string(found_marts, ', '), published);
    end if;

    insert into {{ private }}.dbt_published (singleton, build_id, published_at)
    values (true, build.build_id, clock_timestamp())
    on conflict (singleton) do update set build_id = excluded.build_id, published_at = excluded.published_at;
    update {{ private }}.dbt_builds set status = 'published', ended_at = clock_timestamp()
    where build_id = build.build_id;

    -- Whatever the analytics schema holds under a mart's name and is not a view (the tables of a
    -- warehouse built before publishing existed) goes first, so no cascade can reach a new view.
    execute format('create schema if not exists %I', published_schema);
    foreach mart in array marts loop
        target := to_regclass(format('%I.%I', published_schema, mart));
        if target is not null and (select relkind from pg_class where oid = target) <> 'v' then
            execute format('drop table %s cascade', target);
        end if;
    end loop;
    -- Each view, (re)created only when its definition changes: `create or replace` keeps views an
    -- analyst built on it; a change of columns drops and creates it. A cascade can drop another
    -- mart's view (an old view over an old view): go round until nothing changes.
    for pass in 1..3 loop
        changed := false;
        foreach mart in array marts loop
            select relkind into kind from pg_class where oid = to_regclass(format('%I.%I', private, mart));
            if kind is null then
                continue;  -- not built yet (a first build that stopped before it)
            end if;
            select string_agg(quote_ident(attname), ', ' order by attnum) into listed
            from pg_attribute
            where attrelid = to_regclass(format('%I.%I', private, mart)) and attnum > 0
                and not attisdropped and attname <> 'dbt_build_id';
            if kind = 'r' then
                body := format(
                    'select %1$s from %2$I.%3$I where dbt_build_id <= (select build_id from %2$I.dbt_published) '
                    'union all select %1$s from %2$I.%4$I where dbt_build_id <= (select build_id from %2$I.dbt_published) '
                    'and retired_build_id > (select build_id from %2$I.dbt_published)',
                    listed, private, mart, mart || '__retired');
            else
                body := format('select %s from %I.%I', listed, private, mart);
            end if;
            signature := 'The published build of ' || private || '.' || mart || ' (dbt/macros/publish): ' || md5(body);
            target := to_regclass(format('%I.%I', published_schema, mart));
            if target is not null and obj_description(target, 'pg_class') = signature then
                continue;
            end if;
            changed := true;
            begin
                execute format('create or replace view %I.%I as %s', published_schema, mart, body);
            exception when invalid_table_definition or feature_not_supported or wrong_object_type then
                execute format('drop view %I.%I cascade', published_schema, mart);
                execute format('create view %I.%I as %s', published_schema, mart, body);
            end;
            execute format('comment on view %I.%I is %L', published_schema, mart, signature);
            if exists (select from pg_roles where rolname = reader_role) then
                execute format('grant select on %I.%I to %I', published_schema, mart, reader_role);
            end if;
        end loop;
        exit when not changed;
    end loop;
    return format('published build %s (readers saw build %s until now)', build.build_id, published);
end
$publish$;

create or replace function {{ private }}.clean_up_published() returns text
language plpgsql as $clean$
declare
    private text := {{ dbt.string_literal(private_marts_schema()) }};
    published bigint;
    relation record;
    removed integer := 0;
    kept integer := 0;
begin
    select build_id into published from {{ private }}.dbt_published;
    if published is null then
        return 'nothing published yet';
    end if;
    -- a reader that needs the relations a deploy replaced holds a lock on them: never wait for it
    set local lock_timeout = '2s';
    for relation in
        select class.relname as name, class.relkind
        from pg_class as class
        where class.relnamespace = to_regnamespace(private) and class.relkind in ('r', 'v')
            and class.relname ~ '__old_[0-9a-f]{8}$'
    loop
        begin
            execute format('drop %s %I.%I', case relation.relkind when 'v' then 'view' else 'table' end,
                private, relation.name);
            execute format('drop table if exists %I.%I', private, relation.name || '__retired');
            removed := removed + 1;
        exception when dependent_objects_still_exist or lock_not_available then
            kept := kept + 1;  -- still read (a view not rebuilt yet, a long query): a later build drops it
        end;
    end loop;
    for relation in
        select class.oid::regclass as name
        from pg_class as class
        where class.relnamespace = to_regnamespace(private) and class.relkind = 'r'
            and class.relname like '%\_\_retired'
    loop
        execute format('delete from %s where retired_build_id <= %s', relation.name, published);
    end loop;
    return format('cleaned up after build %s: %s replaced relations dropped, %s still read', published, removed, kept);
end
$clean$;
{%- endmacro %}

{#
    on-run-end: publish this invocation's build if it may (publish_build says why not), then clean
    up. Each in its own committed transaction; the hook statement itself is empty.
#}
{% macro publish_marts(results) -%}
    {#- `dbt docs generate` and `dbt compile` render the hook too: only commands that ran on-run-start publish -#}
    {%- if not execute or target.type != 'postgres' or flags.WHICH not in ['build', 'run', 'seed', 'snapshot', 'test'] -%}
        {{ return('select 1') }}
    {%- endif -%}
    {%- set private = private_marts_schema() -%}
    {%- set failed = [] -%}
    {%- set built = [] -%}
    {%- for result in results -%}
        {%- if result.status in ['error', 'fail', 'skipped', 'runtime error', 'partial success'] -%}
            {%- do failed.append(result.node.name) -%}
        {%- elif result.node.resource_type == 'model' and result.node.schema == private -%}
            {%- do built.append(result.node.name) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- set marts = [] -%}
    {%- for node in graph.nodes.values() -%}
        {%- if node.resource_type == 'model' and node.schema == private and node.config.materialized != 'ephemeral' -%}
            {%- do marts.append(node.name) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- set call -%}
        select {{ adapter.quote(private) }}.publish_build(
            {{ dbt.string_literal(invocation_id) }},
            {{ text_array(marts | sort) }},
            {{ text_array(built) }},
            {{ text_array(failed) }},
            {{ dbt.string_literal(published_marts_schema()) }},
            {{ dbt.string_literal(analyst_role()) }}
        )
    {%- endset -%}
    {%- set outcome = run_query(call).columns[0].values()[0] -%}
    {%- do run_query('commit') -%}
    {{ log("Publish: " ~ outcome, info=true) }}
    {%- if outcome.startswith('published') -%}
        {%- set cleaned = run_query('select ' ~ adapter.quote(private) ~ '.clean_up_published()').columns[0].values()[0] -%}
        {%- do run_query('commit') -%}
        {{ log("Publish: " ~ cleaned, info=true) }}
    {%- endif -%}
    {{ return('select 1') }}
{%- endmacro %}

{% macro text_array(values) -%}
    array[{%- for value in values -%}{{ dbt.string_literal(value) }}{{ ", " if not loop.last }}{%- endfor -%}]::text[]
{%- endmacro %}
