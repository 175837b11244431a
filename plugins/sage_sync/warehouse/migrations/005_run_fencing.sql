-- Run fencing (sage_sync.warehouse.runs): a page's writes land only while its run is the live one.
-- Idempotent like every migration.

-- A company's generation grows by one at every reset and disconnect. A run records the generation
-- it opened in; a page of a run whose generation is older than its company's is refused, and so is
-- re-opening such a run (an old Airflow run retried after a reset). Existing rows start at 0 on
-- both sides, so runs open when this is applied stay live.
alter table sage_control.companies add column if not exists generation bigint not null default 0;
alter table sage_control.sync_runs add column if not exists generation bigint not null default 0;
