-- Ledger accounts cannot be deleted in Sage (they are taken out of the chart instead).
with

source as (
    select * from {{ source('sage', 'ledger_accounts') }}
),

latest as (
    {{ latest_versions('source') }}
),

renamed as (
    select
        company_id,
        record_id as ledger_account_id,
        {{ sage_text('payload', 'name') }} as ledger_account_name,
        {{ sage_text('payload', 'displayed_as') }} as ledger_account_displayed_as,
        {{ sage_integer('payload', 'nominal_code') }} as nominal_code,
        {{ sage_link_id('payload', 'ledger_account_type') }} as ledger_account_type,
        {{ sage_link_id('payload', 'ledger_account_group') }} as ledger_account_group,
        {{ sage_boolean('payload', 'included_in_chart') }} as is_included_in_chart,
        {{ sage_timestamp('payload', 'created_at') }} as created_at,
        source_updated_at as updated_at,
        first_synced_at,
        _extracted_at as last_changed_at,
        {{ sage_invalid_fields('ledger_accounts', 'payload') }} as invalid_fields
    from latest
),

final as (
    select * from renamed
)

select * from final
