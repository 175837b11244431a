{#
    The name of this warehouse's read-only role: var analyst_role (env SAGE_ANALYST_ROLE), else
    analyst_<database>. Roles are cluster-wide: one name shared by every warehouse on a server
    would let an analyst of one read the marts of all (each build grants its role its own marts).
#}
{% macro analyst_role() -%}
    {{- return(var("analyst_role", "") or ("analyst_" ~ target.dbname)[:63]) -}}
{%- endmacro %}

{#
    The read-only analyst role (macro analyst_role): it can select the marts (schema `analytics`
    on a production target, `<target schema>_analytics` on another, macro generate_schema_name)
    and nothing else. Run as an on-run-end hook, so every build leaves the grants in place; every
    statement is idempotent.

    - The role is NOLOGIN: people get it through membership (`grant analyst_<db> to alice`).
    - Tables are re-created by every build, so select is granted on all current tables and, through
      default privileges, on tables the build user creates later.
    - sage_raw and sage_control (oauth_tokens!) are never granted; they are revoked explicitly so a
      hand-made grant does not survive the next build. Staging, intermediate and the private marts
      schema the build writes (`sage_marts`: analysts read its published build through the views
      in `analytics`, macros/publish/) are not analyst facing either.
    - Roles are cluster-wide, and two builds may race to create it: a duplicate is ignored.
#}
{% macro grant_analyst_access() -%}
    {%- set role = analyst_role() -%}
    {%- if target.type != "postgres" or not execute -%}
        {{ return("select 1") }}
    {%- endif -%}
    {%- set marts_schema = generate_schema_name("analytics", none) -%}
do $grants$
begin
    if not exists (select from pg_roles where rolname = '{{ role | replace("'", "''") }}') then
        begin
            create role {{ adapter.quote(role) }} nologin noinherit;
        exception when duplicate_object or unique_violation then
            null;
        end;
    end if;
end
$grants$;
create schema if not exists {{ adapter.quote(marts_schema) }};
grant usage on schema {{ adapter.quote(marts_schema) }} to {{ adapter.quote(role) }};
grant select on all tables in schema {{ adapter.quote(marts_schema) }} to {{ adapter.quote(role) }};
alter default privileges in schema {{ adapter.quote(marts_schema) }}
    grant select on tables to {{ adapter.quote(role) }};
{%- set private_schemas = ["sage_raw", "sage_control",
    generate_schema_name("sage_staging", none), generate_schema_name("sage_intermediate", none),
    private_marts_schema()] %}
{%- for private_schema in private_schemas %}
do $revoke$
begin
    if exists (select from pg_namespace where nspname = '{{ private_schema }}') then
        execute format('revoke all on all tables in schema %I from %I', '{{ private_schema }}', '{{ role | replace("'", "''") }}');
        execute format('revoke all on schema %I from %I', '{{ private_schema }}', '{{ role | replace("'", "''") }}');
    end if;
end
$revoke$;
{%- endfor %}
{%- endmacro %}
