-- Warehouse schemas for the Sage sync: control state and append-only raw landing tables.
-- Applied by sage_sync.migrate in one transaction; every statement is idempotent so that
-- re-running set-up changes nothing.

create schema if not exists sage_control;
create schema if not exists sage_raw;

-- One row per connected Sage business. company_id is Sage's business id.
create table if not exists sage_control.companies (
    company_id           text primary key,
    company_name         text not null,
    accounts_provider    text not null default 'sage_accounting',
    status               text not null default 'initial_sync'
        check (status in ('initial_sync', 'active', 'disconnected', 'needs_reauth', 'error')),
    synced_from_quarter  text not null check (synced_from_quarter ~ '^[0-9]{4}-Q[1-4]$'),
    last_error           text,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    connected_at         timestamptz,
    disconnected_at      timestamptz
);

-- Encrypted OAuth tokens (Fernet, keyed by AIRFLOW__CORE__FERNET_KEY). Never stored in clear.
create table if not exists sage_control.oauth_tokens (
    company_id           text primary key references sage_control.companies (company_id),
    access_token_enc     text not null,
    refresh_token_enc    text not null,
    access_expires_at    timestamptz not null,
    refresh_expires_at   timestamptz,
    updated_at           timestamptz not null default now()
);

-- Per company, per stream: how far the change feed and the deletion feed have been read.
-- Both are in Sage's clock (values seen in Sage's payloads), never the local clock.
create table if not exists sage_control.watermarks (
    company_id           text not null references sage_control.companies (company_id),
    stream               text not null,
    updated_since        timestamptz,
    deleted_since        timestamptz,
    updated_at           timestamptz not null default now(),
    primary key (company_id, stream)
);

-- Audit of every sync run: one row per run and company; per-stream counters in stats.
create table if not exists sage_control.sync_runs (
    sync_run_id          text primary key,
    company_id           text not null references sage_control.companies (company_id),
    kind                 text not null check (kind in ('daily', 'backfill', 'reset', 'manual')),
    status               text not null default 'running'
        check (status in ('running', 'success', 'failed', 'skipped')),
    started_at           timestamptz not null default now(),
    ended_at             timestamptz,
    -- {"<stream>": {"pages": n, "rows_seen": n, "versions_added": n, "total_reported": n,
    --               "deletions": n, "quarantined": n}}
    stats                jsonb not null default '{}'::jsonb,
    error                text
);
create index if not exists sync_runs_company_started
    on sage_control.sync_runs (company_id, started_at desc);

-- Append-only log of what happened to each connection (connected, disconnected, ...).
create table if not exists sage_control.connection_events (
    event_id             bigserial primary key,
    company_id           text not null,
    event_type           text not null,
    occurred_at          timestamptz not null default now(),
    details              jsonb not null default '{}'::jsonb
);
create index if not exists connection_events_company
    on sage_control.connection_events (company_id, occurred_at);

-- Raw landing tables: one per stream, identical shape, append-only. A new row is a new version
-- of a record; a re-fetch whose content hash equals the latest version adds nothing.
do $$
declare
    stream text;
begin
    foreach stream in array array[
        'businesses', 'financial_settings', 'ledger_accounts', 'contacts', 'tax_rates',
        'purchase_invoices', 'purchase_credit_notes', 'purchase_quick_entries', 'other_payments'
    ] loop
        execute format($f$
            create table if not exists sage_raw.%1$I (
                company_id        text not null,
                record_id         text not null,
                source_updated_at timestamptz,
                payload           jsonb not null,
                content_hash      text not null,
                _extracted_at     timestamptz not null default now(),
                _sync_run_id      text not null
            )$f$, stream);
        execute format(
            'create index if not exists %1$I on sage_raw.%2$I (company_id, record_id, _extracted_at desc)',
            stream || '_latest', stream);
    end loop;
end
$$;

-- Deletions seen in Sage (deleted_since feed or an id reconciliation sweep). Append-only.
create table if not exists sage_raw.deletions (
    company_id           text not null,
    stream               text not null,
    record_id            text not null,
    source_deleted_at    timestamptz,
    detection_method     text not null check (detection_method in ('deleted_since', 'reconciliation')),
    payload              jsonb,
    _extracted_at        timestamptz not null default now(),
    _sync_run_id         text not null
);
create unique index if not exists deletions_once
    on sage_raw.deletions (company_id, stream, record_id, detection_method);

-- Records that could not be loaded, kept whole with the reason, so nothing is lost silently.
create table if not exists sage_raw.quarantine (
    company_id           text not null,
    stream               text not null,
    record_id            text,
    raw_payload          text not null,
    reason               text not null,
    _extracted_at        timestamptz not null default now(),
    _sync_run_id         text not null
);
