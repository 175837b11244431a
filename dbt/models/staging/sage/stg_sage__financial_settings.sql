-- A singleton per company (record_id = company_id), so the latest version is the settings.
with

source as (
    select * from {{ source('sage', 'financial_settings') }}
),

latest as (
    {{ latest_versions('source') }}
),

renamed as (
    select
        company_id,
        {{ sage_link_id('payload', 'base_currency') }} as base_currency,
        {{ sage_boolean('payload', 'multi_currency_enabled') }} as is_multi_currency_enabled,
        {{ sage_text('payload', 'accounting_type') }} as accounting_type,
        {{ sage_date('payload', 'year_end_date') }} as year_end_date,
        source_updated_at as updated_at,
        first_synced_at,
        _extracted_at as last_changed_at,
        {{ sage_invalid_fields('financial_settings', 'payload') }} as invalid_fields
    from latest
),

final as (
    select * from renamed
)

select * from final
