-- Connection lifecycle: one running sync per company, progress heartbeats, reconciliation requests.
-- Idempotent like 001: every statement can run again and changes nothing the second time.

-- A reconnect (or a reset) asks the next run to sweep ids for deletions Sage's deleted_since feed
-- may no longer remember; last_reconciled_at also drives the weekly sweep.
alter table sage_control.companies add column if not exists reconcile_requested boolean not null default false;
alter table sage_control.companies add column if not exists last_reconciled_at timestamptz;

-- When a run last committed a page (set by the trigger below): lets a new run take over a
-- 'running' row whose process died, without guessing from started_at how long a sync may take.
alter table sage_control.sync_runs add column if not exists last_progress_at timestamptz;

create or replace function sage_control.sync_runs_touch_progress() returns trigger
language plpgsql as $$
begin
    if new.stats is distinct from old.stats or new.status is distinct from old.status then
        new.last_progress_at := now();
    end if;
    return new;
end
$$;

drop trigger if exists sync_runs_progress on sage_control.sync_runs;
create trigger sync_runs_progress before update on sage_control.sync_runs
    for each row execute function sage_control.sync_runs_touch_progress();

-- The daily run, a backfill, a reset or a manual sync of one company never run at once: at most
-- one 'running' row per company. Opening a second run fails with a unique violation, which
-- sage_sync.sync.begin_run turns into RunInProgress (and Airflow retries the task later).
-- Before the index exists, several rows may be 'running' (a crashed worker's, say): keep the newest.
update sage_control.sync_runs r set status = 'failed', ended_at = now(),
    error = 'abandoned: superseded by a newer running run when runs became exclusive'
where r.status = 'running' and exists (
    select 1 from sage_control.sync_runs n
    where n.company_id = r.company_id and n.status = 'running' and n.started_at > r.started_at);
create unique index if not exists sync_runs_one_running
    on sage_control.sync_runs (company_id) where status = 'running';

-- Between Sage's callback and the user's choice of business on the Connect page, the fresh tokens
-- wait here (encrypted like oauth_tokens; any api-server worker may serve the next request).
-- A row is deleted when used; rows older than 15 minutes are ignored and purged.
create table if not exists sage_control.pending_authorisations (
    pending_id           text primary key,
    tokens_enc           text not null,
    businesses           jsonb not null,
    created_at           timestamptz not null default now()
);
