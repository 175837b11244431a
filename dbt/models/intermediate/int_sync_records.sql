-- One narrow row per record of the big, incrementally kept streams (contacts and the four spend
-- streams): what rpt_sync_health counts. Counting the staging views directly would parse every
-- record's jsonb on every build; this keeps the few columns it needs, and a daily run rewrites
-- only the records whose latest-version row changed since its last build (dbt_loaded_at).
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['company_id', 'stream', 'record_id'],
        indexes=[
            {'columns': ['company_id', 'stream', 'record_id'], 'unique': True},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

{%- set loaded_after = incremental_watermark('dbt_loaded_at') %}

{#- Every stream kept incrementally (macro sage_streams): its staging model, and how to read its
    id, whether it is gone and its document date there. Contacts are kept for suppliers only. #}
{%- set overrides = {
    'contacts': {'id_column': 'contact_id', 'is_gone': 'is_deleted or not is_vendor'},
} %}
{%- set streams = [] %}
{%- for stream in sage_streams() if stream.is_incremental %}
    {%- set override = overrides.get(stream.name, {}) %}
    {%- do streams.append((
        stream.name,
        'stg_sage__' ~ stream.name,
        override.get('id_column', 'record_id'),
        override.get('is_gone', 'is_deleted'),
        'transaction_date' if stream.is_date_filtered else 'null',
    )) %}
{%- endfor %}

with

records as (
    {%- for stream, model, id_column, is_gone, record_date in streams %}
        select
            company_id,
            '{{ stream }}' as stream,
            {{ id_column }}{% if id_column != 'record_id' %} as record_id{% endif %},
            cast({{ record_date }} as date) as record_date,
            ({{ is_gone }}) as is_gone,
            last_changed_at
        from {{ ref(model) }}
        {%- if is_incremental() %}
    where dbt_loaded_at > {{ loaded_after }}
    {%- endif %}
        {%- if not loop.last %}
            union all
        {%- endif %}
    {%- endfor %}
),

final as (
    select
        *,
        now() as dbt_loaded_at
    from records
)

select * from final
