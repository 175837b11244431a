-- Other payments carry no currency fields: Sage posts them in the business's base currency.
with

latest as (
    select * from {{ ref('base_sage__other_payments_latest') }}
),

deletions as (
    select * from {{ ref('base_sage__deletions') }}
    where stream = 'other_payments'
),

renamed as (
    select
        latest.company_id,
        latest.record_id,
        {{ sage_text('latest.payload', 'displayed_as') }} as document_number,
        {{ sage_link_id('latest.payload', 'transaction_type') }} as transaction_type,
        {{ sage_link_id('latest.payload', 'payment_method') }} as payment_method,
        {{ sage_link_id('latest.payload', 'contact') }} as contact_id,
        {{ sage_text('latest.payload', 'contact_name') }} as contact_name,
        {{ sage_link_id('latest.payload', 'bank_account') }} as bank_account_id,
        {{ sage_text('latest.payload', 'reference') }} as reference,
        {{ sage_date('latest.payload', 'date') }} as transaction_date,
        {{ sage_amount('latest.payload', 'net_amount') }} as net_amount,
        {{ sage_amount('latest.payload', 'tax_amount') }} as tax_amount,
        {{ sage_amount('latest.payload', 'total_amount') }} as total_amount,
        {{ sage_array_length('latest.payload', 'payment_lines') }} as line_count,
        {{ sage_timestamp('latest.payload', 'created_at') }} as created_at,
        latest.source_updated_at as updated_at,
        {{ sage_deletion_columns() }},
        latest.version_count,
        latest.first_synced_at,
        latest._extracted_at as last_changed_at,
        latest.dbt_loaded_at,
        {{ sage_invalid_fields('other_payments', 'latest.payload') }} as invalid_fields
    from latest
    left join deletions
        on latest.company_id = deletions.company_id
            and latest.record_id = deletions.record_id
),

final as (
    select * from renamed
)

select * from final
