{#
    Pre-hook of every incremental model: a reset (sage_sync.lifecycle.reset) wipes a company's raw
    and control rows and records a `reset` connection event; it never touches dbt's tables. Here
    the incremental models react to that event: rows of the company written before its latest
    reset came from the wiped raw rows, so they are deleted, and the re-imported versions (landed
    after the reset) are picked up by the ordinary incremental read. Tables and views rebuild from
    raw anyway; a first or full-refresh build renders nothing.

    The event log is found through the graph rather than source(), so the hook adds no lineage
    edge (an incremental model does not read the control tables, its hook only prunes).
    Needs company_id and dbt_loaded_at, which every incremental model here carries.
#}
{% macro forget_reset_companies() -%}
    {%- if execute and model.resource_type == 'model' and config.get('materialized') == 'incremental'
        and is_incremental() -%}
        {%- set events = graph.sources['source.sage_carbon.sage_control.connection_events'] -%}
        {%- set events_relation = api.Relation.create(
            database=events.database, schema=events.schema, identifier=events.identifier) -%}
delete from {{ this }} as modelled
using (
    select
        company_id,
        max(occurred_at) as reset_at
    from {{ events_relation }}
    where event_type = 'reset'
    group by company_id
) as resets
where modelled.company_id = resets.company_id
    and modelled.dbt_loaded_at < resets.reset_at
    {%- endif -%}
{%- endmacro %}
