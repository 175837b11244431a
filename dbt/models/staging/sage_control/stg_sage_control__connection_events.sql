with

source as (
    select * from {{ source('sage_control', 'connection_events') }}
),

renamed as (
    select
        event_id as connection_event_id,
        company_id,
        event_type,
        occurred_at,
        details
    from source
),

final as (
    select * from renamed
)

select * from final
