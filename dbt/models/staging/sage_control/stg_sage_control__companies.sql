with

source as (
    select * from {{ source('sage_control', 'companies') }}
),

renamed as (
    select
        company_id,
        company_name,
        accounts_provider,
        status,
        synced_from_quarter,
        last_error,
        created_at,
        updated_at,
        connected_at,
        disconnected_at
    from source
),

final as (
    select * from renamed
)

select * from final
