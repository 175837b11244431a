{#
    The raw tables are append-only: every changed fetch of a record is a new row (a version).
    Returns the latest version of each (company_id, record_id), plus when the record was first
    landed, how many versions it has and when its newest version (of any age) landed.

    Latest version wins: the highest Sage `updated_at` (source_updated_at), so an older version
    re-fetched late (the sync re-reads a 10 minute overlap) never overrides a newer one; ties and
    versions without an updated_at fall back to the load time.
#}
{% macro latest_versions(relation) -%}
    select
        ranked.company_id,
        ranked.record_id,
        ranked.source_updated_at,
        ranked.payload,
        ranked.content_hash,
        ranked._extracted_at,
        ranked._sync_run_id,
        ranked.first_synced_at,
        ranked.version_count,
        ranked.last_version_landed_at
    from (
        select
            versions.*,
            row_number() over (
                partition by versions.company_id, versions.record_id
                order by versions.source_updated_at desc nulls last, versions._extracted_at desc
            ) as version_rank,
            min(versions._extracted_at) over (
                partition by versions.company_id, versions.record_id
            ) as first_synced_at,
            count(*) over (partition by versions.company_id, versions.record_id) as version_count,
            max(versions._extracted_at) over (
                partition by versions.company_id, versions.record_id
            ) as last_version_landed_at
        from {{ relation }} as versions
    ) as ranked
    where ranked.version_rank = 1
{%- endmacro %}
