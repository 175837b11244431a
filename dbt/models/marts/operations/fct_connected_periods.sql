-- One row per period of a company's connection: connected, disconnected or needing
-- re-authorisation, split again wherever Synced From moved. Built from the connection event log;
-- for each period without access, what the first successful sync after it caught up.
with

events as (
    select * from {{ ref('stg_sage_control__connection_events') }}
),

sync_runs as (
    select * from {{ ref('stg_sage_control__sync_runs') }}
),

-- Only events that change the connection's state or its Synced From make a boundary; run
-- outcomes, errors and resets do not.
state_events as (
    select
        company_id,
        connection_event_id,
        occurred_at,
        case
            when event_type in ('connected', 'reconnected') then 'connected'
            when event_type = 'disconnected' then 'disconnected'
            when event_type = 'needs_reauth' then 'needs_reauthorisation'
        end as connection_state,
        details ->> 'synced_from_quarter' as synced_from_quarter
    from events
    where event_type in ('connected', 'reconnected', 'disconnected', 'needs_reauth', 'synced_from_moved')
),

-- synced_from_moved keeps the state and needs_reauth carries no quarter: carry both forward.
grouped as (
    select
        *,
        count(connection_state) over by_time as state_group,
        count(synced_from_quarter) over by_time as quarter_group
    from state_events
    window by_time as (partition by company_id order by occurred_at, connection_event_id)
),

filled as (
    select
        company_id,
        connection_event_id,
        occurred_at,
        max(connection_state) over (partition by company_id, state_group) as connection_state,
        max(synced_from_quarter) over (partition by company_id, quarter_group) as synced_from_quarter
    from grouped
),

changes as (
    select
        *,
        lag(connection_state) over by_time as previous_state,
        lag(synced_from_quarter) over by_time as previous_synced_from_quarter
    from filled
    window by_time as (partition by company_id order by occurred_at, connection_event_id)
),

boundaries as (
    select *
    from changes
    where
        connection_state is not null
        and (
            previous_state is null
            or connection_state is distinct from previous_state
            or synced_from_quarter is distinct from previous_synced_from_quarter
        )
),

periods as (
    select
        company_id,
        connection_state,
        synced_from_quarter,
        occurred_at as period_started_at,
        lead(occurred_at) over by_time as period_ended_at,
        row_number() over by_time as period_number
    from boundaries
    window by_time as (partition by company_id order by occurred_at, connection_event_id)
),

-- The first successful daily/manual/reset sync started after a period without access ended:
-- it imports what was created or updated meanwhile (everything since the last watermark) and
-- detects what was deleted meanwhile (deleted_since feed and the reconciliation sweep).
catch_up as (
    select
        periods.company_id,
        periods.period_number,
        first_run.sync_run_id,
        first_run.stats
    from periods
    inner join lateral (
        select
            sync_runs.sync_run_id,
            sync_runs.stats
        from sync_runs
        where
            sync_runs.company_id = periods.company_id
            and sync_runs.started_at >= periods.period_ended_at
            and sync_runs.sync_status = 'success'
            and sync_runs.sync_kind in ('daily', 'manual', 'reset')
        order by sync_runs.started_at
        limit 1
    ) as first_run on true
    where periods.connection_state <> 'connected'
),

-- Counted from the run's own counters, which survive a later reset (raw rows do not).
catch_up_counts as (
    select
        catch_up.company_id,
        catch_up.period_number,
        catch_up.sync_run_id,
        coalesce(sum((stream_stats.value ->> 'versions_added')::bigint), 0) as records_imported_on_reconnection,
        coalesce(sum(
            coalesce((stream_stats.value ->> 'deletions')::bigint, 0)
            + coalesce((stream_stats.value ->> 'reconciled_deletions')::bigint, 0)
        ), 0) as deletions_detected_on_reconnection,
        coalesce(sum((stream_stats.value ->> 'reconciled_deletions')::bigint), 0)
            as deletions_detected_by_reconciliation
    from catch_up
    left join lateral jsonb_each(catch_up.stats) as stream_stats on true
    group by catch_up.company_id, catch_up.period_number, catch_up.sync_run_id
),

final as (
    select
        md5(periods.company_id || '|' || periods.period_number::text) as connected_period_id,
        periods.company_id,
        periods.period_number,
        periods.connection_state,
        periods.period_started_at,
        periods.period_ended_at,
        periods.period_ended_at is null as is_current,
        extract(epoch from coalesce(periods.period_ended_at, now()) - periods.period_started_at)::bigint
            as duration_seconds,
        periods.synced_from_quarter,
        catch_up_counts.sync_run_id as catch_up_sync_run_id,
        catch_up_counts.records_imported_on_reconnection,
        catch_up_counts.deletions_detected_on_reconnection,
        catch_up_counts.deletions_detected_by_reconciliation
    from periods
    left join catch_up_counts
        on
            periods.company_id = catch_up_counts.company_id
            and periods.period_number = catch_up_counts.period_number
)

select * from final
