-- One row per deleted record. A record can be seen deleted twice (feed and reconciliation sweep);
-- the first detection is the one reported.
{{ config(materialized="view") }}

with

source as (
    select * from {{ source('sage', 'deletions') }}
),

ranked as (
    select
        *,
        row_number() over (
            partition by company_id, stream, record_id
            order by _extracted_at, detection_method
        ) as detection_rank,
        min(source_deleted_at) over (partition by company_id, stream, record_id) as first_source_deleted_at
    from source
),

renamed as (
    select
        company_id,
        stream,
        record_id,
        first_source_deleted_at as deleted_at,
        _extracted_at as deletion_detected_at,
        detection_method as deletion_detection_method
    from ranked
    where detection_rank = 1
),

final as (
    select * from renamed
)

select * from final
