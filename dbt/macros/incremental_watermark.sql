{#
    The newest value of `column` in this incremental model's own table (minus `lookback`, an
    interval), rendered as a timestamptz literal; '-infinity' on a first or full-refresh build.

    Why a literal and not `where x > (select max(x) from this)`: PostgreSQL plans a subquery's
    value as unknown and assumes a third of the rows match, so it scans the whole (5M-row) table
    instead of using the index on `column`. With the value in the SQL the planner sees how few
    rows are new, and a daily run reads only those. A unit test gets the subquery (its `this` is a
    fixture, not a table the macro could query).
#}
{% macro incremental_watermark(column, lookback=none) -%}
    {{ watermark_literal('max(' ~ column ~ ')' ~ (" - interval '" ~ lookback ~ "'" if lookback else '')) }}
{%- endmacro %}

{#
    The watermark of a mart kept incrementally (a model in the private marts schema): the start of
    the transaction that last wrote it, from the build log (`dbt_build_marts.read_at`, written by
    mart_post_hook in that same transaction). Every upstream row stamped up to then (an upstream
    model stamps `dbt_loaded_at` with its own transaction's start and commits before this model
    begins) was read by that build.

    Why not the newest `dbt_loaded_at` of the mart's own rows: a build that writes no row leaves it
    behind. An exception list or `rpt_invalid_values` is usually empty, so its watermark stayed at
    -infinity and every daily build re-checked every record (94 s of a 105 s daily build at 200k
    lines); a rollup whose quarters did not change re-read every change since it last did. A mart
    built before the log had `read_at` falls back to its own rows. Anything else (an intermediate,
    a unit test) gets incremental_watermark(column).
#}
{% macro mart_watermark(column='dbt_loaded_at') -%}
    {%- if model.resource_type == 'unit_test' or not is_private_mart() -%}
        {{- incremental_watermark(column) -}}
    {%- else -%}
        {%- set logged -%}
            (select max(read_at) from {{ adapter.quote(private_marts_schema()) }}.dbt_build_marts
            where mart = {{ dbt.string_literal(this.identifier) }})
        {%- endset -%}
        {{- watermark_literal('coalesce(' ~ logged ~ ', max(' ~ column ~ '))') -}}
    {%- endif -%}
{%- endmacro %}

{#
    The watermark of a latest-version model over an append-only raw stream: read the landings
    stamped after

        least(max(last_landed_at), greatest(max(last_landed_at), max(dbt_loaded_at)) - lookback)

    Everything stamped after the newest landing this table holds is new. Below it, only a page
    that committed after the previous build read can be missing, and the loader stamps a page with
    its transaction's start, which is at most a page transaction (seconds) before its commit, so
    no later than `lookback` before that build's start (dbt_loaded_at, the build transaction's
    now(), is no later than its read). So the lookback counts back from the previous build, not
    from the newest landing: the first build after a long initial sync no longer re-reads the
    sync's last hour (at 5M versions landed within the hour: all of them). A build that wrote no
    row leaves an older dbt_loaded_at, which only widens the window.
#}
{% macro incremental_landing_watermark(lookback) -%}
    {{ watermark_literal(
        "least(max(last_landed_at), greatest(max(last_landed_at), max(dbt_loaded_at)) - interval '"
        ~ lookback ~ "')"
    ) }}
{%- endmacro %}

{% macro watermark_literal(expression) -%}
    {%- if is_incremental() and model.resource_type == 'unit_test' -%}
        (select coalesce({{ expression }}, '-infinity'::timestamptz) from {{ this }})
    {%- elif execute and is_incremental() -%}
        {%- set query -%}
            select cast(coalesce({{ expression }}, '-infinity'::timestamptz) as text) as watermark
            from {{ this }}
        {%- endset -%}
        {%- set watermark = run_query(query).columns[0].values()[0] -%}
        '{{ watermark }}'::timestamptz
    {%- else -%}
        '-infinity'::timestamptz
    {%- endif -%}
{%- endmacro %}
