-- Incidents a person must hear about, and whether they were told (sage_sync.lifecycle.notices).
-- One row per incident of one company: a grant that needs re-authorisation, a failed sync or
-- backfill, a first sync past 24 hours. Idempotent like every migration.
create table if not exists sage_control.notices (
    notice_id    bigserial primary key,
    company_id   text not null,
    incident     text not null
        check (incident in ('needs_reauth', 'sync_failed', 'backfill_failed', 'first_sync_overdue')),
    opened_at    timestamptz not null default now(),
    -- When the notice went out on every configured channel; null while none took it (tried again
    -- at the next check, so a webhook that was down does not lose the incident).
    notified_at  timestamptz,
    -- Set once the condition is gone (reconnected, a successful run, the first sync done): the
    -- next occurrence is a new incident with a notice of its own.
    resolved_at  timestamptz,
    sync_run_id  text,
    -- The notice as sent (subject line, then the body); built without tokens or secrets.
    message      text not null
);
-- At most one open incident of a kind per company: what makes a notice fire once per incident,
-- whichever of a run's tasks, retries or callbacks saw it first.
create unique index if not exists notices_one_open
    on sage_control.notices (company_id, incident) where resolved_at is null;
