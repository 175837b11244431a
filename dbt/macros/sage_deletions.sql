{#
    Deletion columns of a staging model. A record is deleted when the deletion feed or a
    reconciliation sweep listed it (base_sage__deletions), or when its own latest payload carries
    a `deleted_at`.
#}
{% macro sage_deletion_columns(latest_alias='latest', deletions_alias='deletions') -%}
        ({{ deletions_alias }}.record_id is not null
            or {{ latest_alias }}.payload ->> 'deleted_at' is not null) as is_deleted,
        coalesce(
            {{ deletions_alias }}.deleted_at, {{ sage_timestamp(latest_alias ~ '.payload', 'deleted_at') }}
        ) as deleted_at,
        coalesce(
            {{ deletions_alias }}.deletion_detected_at,
            case when {{ latest_alias }}.payload ->> 'deleted_at' is not null then {{ latest_alias }}._extracted_at end
        ) as deletion_detected_at,
        coalesce(
            {{ deletions_alias }}.deletion_detection_method,
            case when {{ latest_alias }}.payload ->> 'deleted_at' is not null then 'payload_deleted_at' end
        ) as deletion_detection_method
{%- endmacro %}
