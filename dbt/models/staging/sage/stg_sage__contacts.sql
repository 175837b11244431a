with

latest as (
    select * from {{ ref('base_sage__contacts_latest') }}
),

deletions as (
    select * from {{ ref('base_sage__deletions') }}
    where stream = 'contacts'
),

renamed as (
    select
        latest.company_id,
        latest.record_id as contact_id,
        {{ sage_text('latest.payload', 'name') }} as contact_name,
        {{ sage_text('latest.payload', 'reference') }} as contact_reference,
        {{ sage_link_id('latest.payload', 'currency') }} as currency,
        {{ sage_text('latest.payload', 'tax_number') }} as tax_number,
        coalesce(latest.payload -> 'contact_types' @> '[{"id": "VENDOR"}]', false) as is_vendor,
        coalesce(latest.payload -> 'contact_types' @> '[{"id": "CUSTOMER"}]', false) as is_customer,
        {{ sage_timestamp('latest.payload', 'created_at') }} as created_at,
        latest.source_updated_at as updated_at,
        {{ sage_deletion_columns() }},
        latest.first_synced_at,
        latest._extracted_at as last_changed_at,
        latest.dbt_loaded_at,
        {{ sage_invalid_fields('contacts', 'latest.payload') }} as invalid_fields
    from latest
    left join deletions
        on latest.company_id = deletions.company_id
            and latest.record_id = deletions.record_id
),

final as (
    select * from renamed
)

select * from final
