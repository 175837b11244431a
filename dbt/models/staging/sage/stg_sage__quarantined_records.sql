with

source as (
    select * from {{ source('sage', 'quarantine') }}
),

renamed as (
    select
        -- No natural key: the same broken record can be quarantined by several runs.
        {{ surrogate_key(['company_id', 'stream', 'record_id', '_sync_run_id', 'raw_payload']) }}
            as quarantined_record_id,
        company_id,
        stream,
        record_id,
        raw_payload,
        reason,
        _extracted_at as quarantined_at,
        _sync_run_id as sync_run_id
    from source
),

final as (
    select * from renamed
)

select * from final
