with

companies as (
    select * from {{ ref('int_companies_joined') }}
),

final as (
    select
        company_id,
        company_name,
        business_name,
        country_code,
        accounts_provider,
        status,
        synced_from_quarter,
        base_currency,
        is_gbp,
        connected_at,
        disconnected_at,
        last_successful_sync_at,
        initial_sync_completed_at,
        is_initial_sync_complete
    from companies
)

select * from final
