{#
    Write-audit-publish with row versions: how a build's writes are kept apart from what readers see.

    dbt builds the marts one after another, each in its own transaction, so a query comparing two
    marts mid-build could see the new line fact beside the old rollups. Here the marts are built in
    a private schema (`sage_marts`; dev: `dev_sage_marts`) and readers query `analytics.<mart>`,
    views that show only the PUBLISHED build (publish_marts.sql). For that every table there keeps
    row versions:

    - each invocation gets an increasing build id (on-run-start: a row in `dbt_builds`); a model's
      pre-hook puts it in the session setting `sage.build_id`;
    - every mart table has the column `dbt_build_id`, DEFAULT that setting: inserts leave it out
      (strategies go through published_columns), so a row says which build wrote it;
    - a statement-level AFTER DELETE trigger copies every deleted row, with the build that deleted
      it (`retired_build_id`), into `<mart>__retired`. No strategy or materialisation needs to know:
      an in-place refill, delete+insert, replace_documents or a reset's prune all retire rows.
      An UPDATE is handled the same way (the old row is retired, the new one stamped); a TRUNCATE
      would take the published rows with it and is refused.

    A reader of a published build P sees the table's rows written by builds <= P, plus the retired
    rows written by builds <= P and retired by a build after P: exactly the marts as build P left
    them, whatever later builds are doing or left half done.
#}

{#- The schema dbt builds the marts in (the marts folder's +schema), and the one readers query. -#}
{% macro private_marts_schema() -%}
    {{- return(generate_schema_name('sage_marts', none) | trim) -}}
{%- endmacro %}

{% macro published_marts_schema() -%}
    {{- return(generate_schema_name('analytics', none) | trim) -}}
{%- endmacro %}

{#- Whether the node being built is a mart (a model in the private marts schema). -#}
{% macro is_private_mart() -%}
    {{- return(model is defined and model.resource_type == 'model' and this.schema == private_marts_schema()) -}}
{%- endmacro %}

{#
    on-run-start: the bookkeeping tables and functions (idempotent), and this invocation's build
    id. Serialised by an advisory lock, since two invocations may start at once. Hooks run outside
    dbt's transactions: the statement ends with its own commit.
#}
{% macro start_build() -%}
    {%- if not execute or target.type != 'postgres' -%}
        {{ return('select 1') }}
    {%- endif -%}
    {%- set private = adapter.quote(private_marts_schema()) -%}
begin;
select pg_advisory_xact_lock(hashtext({{ dbt.string_literal(private_marts_schema() ~ '.bookkeeping') }}));
create schema if not exists {{ private }};
create table if not exists {{ private }}.dbt_builds (
    build_id bigint generated always as identity primary key,
    invocation_id text not null unique,
    command text,
    started_at timestamptz not null default clock_timestamp(),
    ended_at timestamptz,
    status text not null default 'running',
    outcome text
);
create table if not exists {{ private }}.dbt_build_marts (
    build_id bigint not null,
    mart text not null,
    written_at timestamptz not null default clock_timestamp(),
    primary key (build_id, mart)
);
-- read_at: the start of the transaction that wrote the mart (mart_watermark); added to tables
-- made before it existed
alter table {{ private }}.dbt_build_marts add column if not exists read_at timestamptz;
create table if not exists {{ private }}.dbt_published (
    singleton boolean primary key default true check (singleton),
    build_id bigint not null,
    published_at timestamptz not null
);
create or replace function {{ private }}.retire_rows() returns trigger
language plpgsql as $retire$
declare
    listed text;
begin
    -- by name, so a column appended to the mart later cannot shift what lands where
    select string_agg(quote_ident(attname), ', ' order by attnum) into listed
    from pg_attribute
    where attrelid = tg_relid and attnum > 0 and not attisdropped;
    execute format(
        'insert into %I.%I (%s, retired_build_id) select %s, $1 from retired_rows',
        tg_table_schema, tg_table_name || '__retired', listed, listed
    ) using current_setting('sage.build_id')::bigint;
    return null;
end
$retire$;
create or replace function {{ private }}.stamp_updated_row() returns trigger
language plpgsql as $stamp$
begin
    new.dbt_build_id := current_setting('sage.build_id')::bigint;
    return new;
end
$stamp$;
create or replace function {{ private }}.refuse_truncate() returns trigger
language plpgsql as $refuse$
begin
    raise exception 'sage: %.% holds the published build''s rows: delete them, do not truncate',
        tg_table_schema, tg_table_name;
end
$refuse$;
{{ publish_functions() }}
insert into {{ private }}.dbt_builds (invocation_id, command)
values ({{ dbt.string_literal(invocation_id) }}, {{ dbt.string_literal(flags.WHICH) }})
on conflict (invocation_id) do nothing;
commit;
{%- endmacro %}

{#
    Pre-hook of every model (first, before forget_reset_companies, whose delete is retired too):
    a mart's session carries its build id. Renders nothing for other models.
#}
{% macro mart_pre_hook() -%}
    {%- if execute and is_private_mart() -%}
select set_config('sage.build_id', build_id::text, false)
from {{ adapter.quote(private_marts_schema()) }}.dbt_builds
where invocation_id = {{ dbt.string_literal(invocation_id) }}
    {%- endif -%}
{%- endmacro %}

{#
    Post-hook of every mart, inside its transaction: a table gets (or keeps) its bookkeeping
    column, retired table and triggers, whichever path created it (dbt's own create-table path
    included); and the build records that it wrote the mart (publish_marts reads it). The
    retired table follows the mart's columns: a column added to a table is added there too.
#}
{% macro mart_post_hook() -%}
    {%- if execute and is_private_mart() -%}
        {%- set private = private_marts_schema() -%}
do $bookkeeping$
declare
    mart regclass := to_regclass({{ dbt.string_literal(adapter.quote(private) ~ '.' ~ adapter.quote(this.identifier)) }});
    retired_name text := {{ dbt.string_literal(this.identifier ~ '__retired') }};
    retired regclass;
    missing record;
begin
    if mart is null or (select relkind from pg_class where oid = mart) <> 'r' then
        return;  -- a view mart is live: nothing to version
    end if;
    if not exists (select from pg_attribute where attrelid = mart and attname = 'dbt_build_id' and not attisdropped) then
        -- a non-volatile default: the rows already there get this build's id without a rewrite
        execute format(
            'alter table %s add column dbt_build_id bigint default current_setting(''sage.build_id'')::bigint', mart
        );
    end if;
    retired := to_regclass(format('%I.%I', {{ dbt.string_literal(private) }}, retired_name));
    if retired is null then
        execute format('create table %I.%I (like %s)', {{ dbt.string_literal(private) }}, retired_name, mart);
        retired := to_regclass(format('%I.%I', {{ dbt.string_literal(private) }}, retired_name));
        execute format('alter table %s add column retired_build_id bigint not null', retired);
        if exists (select from pg_attribute where attrelid = mart and attname = 'company_id' and not attisdropped) then
            execute format('create index on %s (company_id)', retired);
        end if;
    end if;
    for missing in
        select quote_ident(attribute.attname) as name, format_type(attribute.atttypid, attribute.atttypmod) as type
        from pg_attribute as attribute
        where attribute.attrelid = mart and attribute.attnum > 0 and not attribute.attisdropped
            and not exists (
                select from pg_attribute as kept
                where kept.attrelid = retired and kept.attname = attribute.attname and not kept.attisdropped
            )
    loop
        execute format('alter table %s add column %s %s', retired, missing.name, missing.type);
    end loop;
    if not exists (select from pg_trigger where tgrelid = mart and tgname = 'sage_retire_deleted_rows') then
        execute format(
            'create trigger sage_retire_deleted_rows after delete on %s referencing old table as retired_rows '
            'for each statement execute function {{ adapter.quote(private) }}.retire_rows()', mart
        );
        execute format(
            'create trigger sage_retire_updated_rows after update on %s referencing old table as retired_rows '
            'for each statement execute function {{ adapter.quote(private) }}.retire_rows()', mart
        );
        execute format(
            'create trigger sage_stamp_updated_rows before update on %s '
            'for each row execute function {{ adapter.quote(private) }}.stamp_updated_row()', mart
        );
        execute format(
            'create trigger sage_refuse_truncate before truncate on %s '
            'for each statement execute function {{ adapter.quote(private) }}.refuse_truncate()', mart
        );
    end if;
end
$bookkeeping$;
insert into {{ adapter.quote(private) }}.dbt_build_marts (build_id, mart, read_at)
values (current_setting('sage.build_id')::bigint, {{ dbt.string_literal(this.identifier) }}, now())
on conflict (build_id, mart) do update set written_at = clock_timestamp(), read_at = now()
    {%- endif -%}
{%- endmacro %}
