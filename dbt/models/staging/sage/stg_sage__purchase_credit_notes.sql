with

latest as (
    select * from {{ ref('base_sage__purchase_credit_notes_latest') }}
),

deletions as (
    select * from {{ ref('base_sage__deletions') }}
    where stream = 'purchase_credit_notes'
),

renamed as (
    select
        latest.company_id,
        latest.record_id,
        {{ sage_text('latest.payload', 'displayed_as') }} as document_number,
        coalesce({{ sage_link_id('latest.payload', 'transaction_type') }}, 'PURCHASE_CREDIT_NOTE') as transaction_type,
        {{ sage_link_id('latest.payload', 'contact') }} as contact_id,
        {{ sage_text('latest.payload', 'contact_name') }} as contact_name,
        {{ sage_text('latest.payload', 'contact_reference') }} as contact_reference,
        {{ sage_text('latest.payload', 'reference') }} as reference,
        {{ sage_text('latest.payload', 'vendor_reference') }} as vendor_reference,
        {{ sage_text('latest.payload', 'notes') }} as notes,
        {{ sage_date('latest.payload', 'date') }} as transaction_date,
        {{ sage_date('latest.payload', 'due_date') }} as due_date,
        {{ sage_date('latest.payload', 'original_invoice_date') }} as original_invoice_date,
        {{ sage_amount('latest.payload', 'net_amount') }} as net_amount,
        {{ sage_amount('latest.payload', 'tax_amount') }} as tax_amount,
        {{ sage_amount('latest.payload', 'total_amount') }} as total_amount,
        {{ sage_amount('latest.payload', 'outstanding_amount') }} as outstanding_amount,
        {{ sage_amount('latest.payload', 'total_paid') }} as total_paid,
        {{ sage_link_id('latest.payload', 'currency') }} as currency,
        {{ sage_amount('latest.payload', 'exchange_rate') }} as exchange_rate,
        {{ sage_amount('latest.payload', 'base_currency_net_amount') }} as base_currency_net_amount,
        {{ sage_amount('latest.payload', 'base_currency_tax_amount') }} as base_currency_tax_amount,
        {{ sage_amount('latest.payload', 'base_currency_total_amount') }} as base_currency_total_amount,
        {{ sage_link_id('latest.payload', 'status') }} as document_status,
        {{ sage_text('latest.payload', 'void_reason') }} as void_reason,
        {{ sage_array_length('latest.payload', 'credit_note_lines') }} as line_count,
        {{ sage_timestamp('latest.payload', 'created_at') }} as created_at,
        latest.source_updated_at as updated_at,
        {{ sage_deletion_columns() }},
        latest.version_count,
        latest.first_synced_at,
        latest._extracted_at as last_changed_at,
        latest.dbt_loaded_at,
        {{ sage_invalid_fields('purchase_credit_notes', 'latest.payload') }} as invalid_fields
    from latest
    left join deletions
        on latest.company_id = deletions.company_id
            and latest.record_id = deletions.record_id
),

final as (
    select * from renamed
)

select * from final
