with

source as (
    select * from {{ source('sage_control', 'sync_runs') }}
),

renamed as (
    select
        sync_run_id,
        company_id,
        kind as sync_kind,
        status as sync_status,
        started_at,
        ended_at,
        stats,
        error as error_message
    from source
),

final as (
    select * from renamed
)

select * from final
