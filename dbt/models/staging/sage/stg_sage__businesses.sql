with

source as (
    select * from {{ source('sage', 'businesses') }}
),

latest as (
    {{ latest_versions('source') }}
),

renamed as (
    select
        company_id,
        record_id as business_id,
        {{ sage_text('payload', 'name') }} as business_name,
        {{ sage_link_id('payload', 'country') }} as country_code,
        {{ sage_timestamp('payload', 'created_at') }} as created_at,
        source_updated_at as updated_at,
        first_synced_at,
        _extracted_at as last_changed_at,
        {{ sage_invalid_fields('businesses', 'payload') }} as invalid_fields
    from latest
),

final as (
    select * from renamed
)

select * from final
