with

source as (
    select * from {{ source('sage', 'tax_rates') }}
),

latest as (
    {{ latest_versions('source') }}
),

renamed as (
    select
        company_id,
        record_id as tax_rate_id,
        {{ sage_text('payload', 'name') }} as tax_rate_name,
        {{ sage_amount('payload', 'percentage') }} as tax_rate_percentage,
        {{ sage_boolean('payload', 'is_visible') }} as is_visible,
        {{ sage_timestamp('payload', 'created_at') }} as created_at,
        source_updated_at as updated_at,
        first_synced_at,
        _extracted_at as last_changed_at,
        {{ sage_invalid_fields('tax_rates', 'payload') }} as invalid_fields
    from latest
),

final as (
    select * from renamed
)

select * from final
