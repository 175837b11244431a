-- Sync health per company and stream: freshness and the last run (company level, repeated on each
-- stream row), rows landed, and reconciliation of what Sage reported ($total) with what the
-- warehouse holds.
--
-- $total is the size of the list the sync read. For a full read (reference streams, a company's
-- first successful run, backfills and resets) it is the number of records Sage holds in the
-- synced window, so it must equal the current (non-deleted) records here. A daily run reads spend
-- streams and contacts incrementally: $total then counts only the changes, so after the read the
-- sync asks Sage for the $total of the whole synced window under the same filter (window_total in
-- the run's stats) and that is compared instead ('window_count'). Runs from before that count
-- existed stay 'changes_only' (is_reconciled null) rather than raise a false alarm.
with

companies as (
    select * from {{ ref('int_companies_joined') }}
),

sync_runs as (
    select * from {{ ref('stg_sage_control__sync_runs') }}
),

-- Every stream of the registry (macro sage_streams) with the flags the reconciliation needs.
streams (stream, stream_kind, is_incremental, is_date_filtered) as (
    values
    {%- for stream in sage_streams() %}
        (
            '{{ stream.name }}',
            '{{ stream.kind }}',
            {{ stream.is_incremental | lower }},
            {{ stream.is_date_filtered | lower }}
        )
        {%- if not loop.last %},{% endif %}
    {%- endfor %}
),

{%- set small_record_models = [] %}
{%- for stream in sage_streams() if not stream.is_incremental %}
    {%- do small_record_models.append((stream.name, 'stg_sage__' ~ stream.name)) %}
{%- endfor %}

-- The reference streams are small and read from staging; contacts and the spend streams come from
-- int_sync_records, kept incrementally, so this build does not re-parse every record. Counted per
-- record date first: the join to the company's window then meets a few thousand groups instead
-- of every record, and the count over int_sync_records runs as one parallel aggregate (joined
-- row by row, PostgreSQL walked its 5M rows in index order on one core).
records as (
    {%- for stream, model in small_record_models %}
        select
            '{{ stream }}' as stream,
            company_id,
            cast(null as date) as record_date,
            false as is_gone,
            count(*) as record_count,
            max(last_changed_at) as last_changed_at
        from {{ ref(model) }}
        group by company_id
        union all
    {%- endfor %}
    select
        stream,
        company_id,
        record_date,
        is_gone,
        count(*) as record_count,
        max(last_changed_at) as last_changed_at
    from {{ ref('int_sync_records') }}
    group by stream, company_id, record_date, is_gone
),

window_start as (
    select
        company_id,
        -- 'YYYY-Qn' -> first day of the quarter
        make_date(
            cast(left(synced_from_quarter, 4) as integer),
            cast(right(synced_from_quarter, 1) as integer) * 3 - 2,
            1
        ) as synced_from_date
    from companies
),

record_counts as (
    select
        records.company_id,
        records.stream,
        coalesce(cast(sum(records.record_count) filter (
            where not records.is_gone
            and (records.record_date is null or records.record_date >= window_start.synced_from_date)
        ) as bigint), 0) as current_record_count,
        coalesce(cast(sum(records.record_count) filter (where records.is_gone) as bigint), 0)
            as deleted_record_count,
        max(records.last_changed_at) as last_version_landed_at
    from records
    left join window_start
        on records.company_id = window_start.company_id
    group by records.company_id, records.stream
),

ranked_runs as (
    select
        sync_runs.*,
        row_number() over (
            partition by sync_runs.company_id
            order by sync_runs.started_at desc, sync_runs.sync_run_id desc
        ) as run_rank,
        row_number() over (
            partition by sync_runs.company_id, (sync_runs.sync_status = 'success')
            order by sync_runs.started_at desc, sync_runs.sync_run_id desc
        ) as status_rank,
        count(*) filter (
            where sync_runs.sync_status = 'success'
        ) over (partition by sync_runs.company_id) as successful_run_count,
        min(sync_runs.started_at) filter (
            where sync_runs.sync_status = 'success'
        ) over (partition by sync_runs.company_id)
            as first_success_started_at
    from sync_runs
),

last_run as (
    select * from ranked_runs
    where run_rank = 1
),

last_success as (
    select * from ranked_runs
    where sync_status = 'success' and status_rank = 1
),

joined as (
    select
        companies.company_id,
        companies.company_name,
        companies.status as company_status,
        streams.stream,
        streams.stream_kind,
        last_run.sync_run_id as last_run_id,
        last_run.sync_kind as last_run_kind,
        last_run.sync_status as last_run_status,
        last_run.started_at as last_run_started_at,
        last_run.ended_at as last_run_ended_at,
        last_run.error_message as last_run_error,
        last_success.sync_run_id as last_successful_run_id,
        coalesce(last_success.ended_at, last_success.started_at) as last_successful_sync_at,
        round(cast(
            extract(epoch from now() - coalesce(last_success.ended_at, last_success.started_at)) / 3600
            as numeric
        ), 1) as hours_since_last_success,
        case
            when last_success.sync_run_id is null then 'never_synced'
            when coalesce(last_success.ended_at, last_success.started_at) >= now() - interval '36 hours' then 'fresh'
            when coalesce(last_success.ended_at, last_success.started_at) >= now() - interval '72 hours' then 'late'
            else 'stale'
        end as freshness_status,
        stats.value as stream_stats,
        -- A full read lists everything in the synced window, so its $total is comparable.
        case
            when stats.value is null or stats.value -> 'total_reported' is null then 'not_reported'
            when not streams.is_incremental
                or last_success.sync_kind in ('backfill', 'reset')
                or last_success.started_at = last_success.first_success_started_at then 'full_read'
            when stats.value -> 'window_total' is not null then 'window_count'
            else 'changes_only'
        end as reconciliation_scope,
        coalesce(record_counts.current_record_count, 0) as current_record_count,
        coalesce(record_counts.deleted_record_count, 0) as deleted_record_count,
        record_counts.last_version_landed_at
    from companies
    cross join streams
    left join last_run
        on companies.company_id = last_run.company_id
    left join last_success
        on companies.company_id = last_success.company_id
    left join lateral (
        select last_success.stats -> streams.stream as value
    ) as stats on true
    left join record_counts
        on companies.company_id = record_counts.company_id
            and streams.stream = record_counts.stream
),

final as (
    select
        {{ surrogate_key(['company_id', 'stream']) }} as sync_health_id,
        company_id,
        company_name,
        company_status,
        stream,
        stream_kind,
        freshness_status,
        last_successful_sync_at,
        hours_since_last_success,
        last_run_id,
        last_run_kind,
        last_run_status,
        last_run_started_at,
        last_run_ended_at,
        last_run_error,
        last_successful_run_id,
        cast(stream_stats ->> 'pages' as integer) as pages_read,
        cast(stream_stats ->> 'passes' as integer) as passes,
        cast(stream_stats ->> 'rows_seen' as integer) as rows_seen,
        cast(stream_stats ->> 'versions_added' as integer) as versions_added,
        cast(stream_stats ->> 'deletions' as integer) as deletions_recorded,
        cast(stream_stats ->> 'quarantined' as integer) as rows_quarantined,
        cast(stream_stats ->> 'total_reported' as integer) as total_reported,
        cast(stream_stats ->> 'window_total' as integer) as window_total,
        current_record_count,
        deleted_record_count,
        last_version_landed_at,
        reconciliation_scope,
        case reconciliation_scope
            when 'full_read' then current_record_count - cast(stream_stats ->> 'total_reported' as integer)
            when 'window_count' then current_record_count - cast(stream_stats ->> 'window_total' as integer)
        end as record_count_difference,
        case reconciliation_scope
            when 'full_read' then current_record_count = cast(stream_stats ->> 'total_reported' as integer)
            when 'window_count' then current_record_count = cast(stream_stats ->> 'window_total' as integer)
        end as is_reconciled
    from joined
)

select * from final
