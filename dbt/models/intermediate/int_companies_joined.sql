-- Each connection with its Sage business, base currency and last successful sync.
with

companies as (
    select * from {{ ref('stg_sage__companies') }}
),

businesses as (
    select * from {{ ref('stg_sage__businesses') }}
),

financial_settings as (
    select * from {{ ref('stg_sage__financial_settings') }}
),

sync_runs as (
    select * from {{ ref('stg_sage__sync_runs') }}
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
        last_successful_sync.last_successful_sync_at
    from companies
    left join business_per_company
        on companies.company_id = business_per_company.company_id
    left join financial_settings
        on companies.company_id = financial_settings.company_id
    left join last_successful_sync
        on companies.company_id = last_successful_sync.company_id
),

final as (
    select * from joined
)

select * from final
