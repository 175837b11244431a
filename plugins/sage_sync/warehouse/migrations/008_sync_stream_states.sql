-- Where each stream of a run stands, written by the stream's own task (lifecycle.airflow_api,
-- records_stream_state): reading, retrying (with Sage's answer and the time Airflow tries again),
-- failed, or done. A stream without a row has not started. Display only: the run's counters stay
-- in sync_runs.stats, and nothing in the sync reads this table.
create table if not exists sage_control.sync_stream_states (
    sync_run_id  text not null references sage_control.sync_runs (sync_run_id) on delete cascade,
    stream       text not null,
    state        text not null check (state in ('reading', 'retrying', 'failed', 'done')),
    error        text,          -- what went wrong, in words safe to show ("Sage answered 503")
    try_number   integer,       -- Airflow's try of the stream's task that wrote the row
    retry_at     timestamptz,   -- when Airflow starts the next try (state retrying)
    updated_at   timestamptz not null default now(),
    primary key (sync_run_id, stream)
);
