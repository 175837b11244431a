with

source as (
    select * from {{ source('sage_control', 'watermarks') }}
),

renamed as (
    select
        company_id,
        stream,
        updated_since,
        deleted_since,
        updated_at
    from source
),

final as (
    select * from renamed
)

select * from final
