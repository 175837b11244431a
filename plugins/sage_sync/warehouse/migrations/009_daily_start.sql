-- A company's own daily start time (sage_sync.orchestration.schedule): minutes after 00:00 UTC.
-- Null, the default, spreads the company over the nightly window by a hash of its id; a value
-- (python -m sage_sync set-daily-start) wins over the spread. Idempotent like every migration:
-- the check comes with the column, so a second run adds neither.
alter table sage_control.companies add column if not exists daily_start_minute smallint
    constraint companies_daily_start_minute_check check (daily_start_minute between 0 and 1439);
