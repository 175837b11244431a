with

latest as (
    select * from {{ ref('base_sage__purchase_quick_entries_latest') }}
),

deletions as (
    select * from {{ ref('base_sage__deletions') }}
    where stream = 'purchase_quick_entries'
),

renamed as (
    select
        latest.company_id,
        latest.record_id,
        {{ sage_text('latest.payload', 'displayed_as') }} as document_number,
        {{ sage_link_id('latest.payload', 'quick_entry_type') }} as quick_entry_type,
        coalesce(
            {{ sage_link_id('latest.payload', 'transaction_type') }},
            'PURCHASE_QUICK_ENTRY_' || {{ sage_link_id('latest.payload', 'quick_entry_type') }}
        ) as transaction_type,
        {{ sage_link_id('latest.payload', 'contact') }} as contact_id,
        {{ sage_text('latest.payload', 'contact_name') }} as contact_name,
        {{ sage_text('latest.payload', 'contact_reference') }} as contact_reference,
        {{ sage_text('latest.payload', 'reference') }} as reference,
        {{ sage_text('latest.payload', 'details') }} as details,
        {{ sage_date('latest.payload', 'date') }} as transaction_date,
        {{ sage_date('latest.payload', 'due_date') }} as due_date,
        {{ sage_link_id('latest.payload', 'ledger_account') }} as ledger_account_id,
        {{ sage_link_id('latest.payload', 'tax_rate') }} as tax_rate_id,
        {{ sage_amount('latest.payload', 'net_amount') }} as net_amount,
        {{ sage_amount('latest.payload', 'tax_amount') }} as tax_amount,
        {{ sage_amount('latest.payload', 'total_amount') }} as total_amount,
        {{ sage_amount('latest.payload', 'outstanding_amount') }} as outstanding_amount,
        {{ sage_link_id('latest.payload', 'currency') }} as currency,
        {{ sage_amount('latest.payload', 'exchange_rate') }} as exchange_rate,
        {{ sage_amount('latest.payload', 'base_currency_net_amount') }} as base_currency_net_amount,
        {{ sage_amount('latest.payload', 'base_currency_tax_amount') }} as base_currency_tax_amount,
        {{ sage_amount('latest.payload', 'base_currency_total_amount') }} as base_currency_total_amount,
        {{ sage_link_id('latest.payload', 'status') }} as document_status,
        {{ sage_timestamp('latest.payload', 'created_at') }} as created_at,
        latest.source_updated_at as updated_at,
        {{ sage_deletion_columns() }},
        latest.version_count,
        latest.first_synced_at,
        latest._extracted_at as last_changed_at,
        latest.dbt_loaded_at,
        {{ sage_invalid_fields('purchase_quick_entries', 'latest.payload') }} as invalid_fields
    from latest
    left join deletions
        on latest.company_id = deletions.company_id
            and latest.record_id = deletions.record_id
),

final as (
    select * from renamed
)

select * from final
