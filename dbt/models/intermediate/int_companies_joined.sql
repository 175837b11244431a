-- Each connection with its Sage business, base currency and last successful sync.
with

companies as (
    select * from {{ ref('stg_sage_control__companies') }}
),

businesses as (
    select * from {{ ref('stg_sage__businesses') }}
),

financial_settings as (
    select * from {{ ref('stg_sage__financial_settings') }}
),

sync_runs as (
    select * from {{ ref('stg_sage_control__sync_runs') }}
),

connection_events as (
    select * from {{ ref('stg_sage_control__connection_events') }}
),

-- A reset wipes a company's data and starts its initial sync again.
last_reset as (
    select
        company_id,
        max(occurred_at) as last_reset_at
    from connection_events
    where event_type = 'reset'
    group by company_id
),

-- The company's data is complete once a sync has succeeded that started after its last reset:
-- until then the spend models hold a partial history and say so.
initial_sync_completion as (
    select
        sync_runs.company_id,
        min(coalesce(sync_runs.ended_at, sync_runs.started_at)) as initial_sync_completed_at
    from sync_runs
    left join last_reset
        on sync_runs.company_id = last_reset.company_id
    where sync_runs.sync_status = 'success'
        and sync_runs.started_at >= coalesce(last_reset.last_reset_at, '-infinity'::timestamptz)
    group by sync_runs.company_id
),

-- A connection is one business (its id is the company_id); prefer that row, else the newest.
business_per_company as (
    select distinct on (company_id)
        company_id,
        business_id,
        business_name,
        country_code
    from businesses
    order by company_id, (business_id = company_id) desc, updated_at desc nulls last, last_changed_at desc
),

last_successful_sync as (
    select
        company_id,
        max(coalesce(ended_at, started_at)) as last_successful_sync_at
    from sync_runs
    where sync_status = 'success'
    group by company_id
),

joined as (
    select
        companies.company_id,
        companies.company_name,
        business_per_company.business_name,
        business_per_company.country_code,
        companies.accounts_provider,
        companies.status,
        companies.synced_from_quarter,
        financial_settings.base_currency,
        coalesce(financial_settings.base_currency = 'GBP', false) as is_gbp,
        companies.connected_at,
        companies.disconnected_at,
        last_successful_sync.last_successful_sync_at,
        initial_sync_completion.initial_sync_completed_at,
        initial_sync_completion.initial_sync_completed_at is not null as is_initial_sync_complete
    from companies
    left join business_per_company
        on companies.company_id = business_per_company.company_id
    left join financial_settings
        on companies.company_id = financial_settings.company_id
    left join last_successful_sync
        on companies.company_id = last_successful_sync.company_id
    left join initial_sync_completion
        on companies.company_id = initial_sync_completion.company_id
),

final as (
    select * from joined
)

select * from final
