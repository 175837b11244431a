-- Grants that survive the real world (issue 23). Idempotent like every migration here.

-- A refresh whose answer may have been lost (read timeout, reset after sending, 502/504) marks the
-- stored refresh token as in doubt until a pair is saved again: if Sage then refuses that token,
-- the reason says "token response lost in transit", not a revoked app.
alter table sage_control.oauth_tokens add column if not exists refresh_in_doubt_since timestamptz;

-- business_missing: the company's business is no longer among /businesses for its grant; runs
-- stop before writing anything until it is back. Replaced only while the check lacks it, so a
-- re-run takes no lock and validates nothing.
do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conrelid = 'sage_control.companies'::regclass
          and conname = 'companies_status_check'
          and pg_get_constraintdef(oid) like '%business_missing%'
    ) then
        alter table sage_control.companies drop constraint if exists companies_status_check;
        alter table sage_control.companies add constraint companies_status_check
            check (status in ('initial_sync', 'active', 'disconnected', 'needs_reauth', 'error', 'business_missing'));
    end if;
end
$$;
