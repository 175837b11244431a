-- One narrow row per record of the big, incrementally kept streams (contacts and the four spend
-- streams): what sync_health counts. Counting the staging views directly would parse every
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

{%- set streams = [
    ('contacts', 'stg_sage__contacts', 'contact_id', 'is_deleted or not is_vendor', 'null'),
    ('purchase_invoices', 'stg_sage__purchase_invoices', 'record_id', 'is_deleted', 'transaction_date'),
    ('purchase_credit_notes', 'stg_sage__purchase_credit_notes', 'record_id', 'is_deleted', 'transaction_date'),
    ('purchase_quick_entries', 'stg_sage__purchase_quick_entries', 'record_id', 'is_deleted', 'transaction_date'),
    ('other_payments', 'stg_sage__other_payments', 'record_id', 'is_deleted', 'transaction_date'),
] %}

with

records as (
    {%- for stream, model, id_column, is_gone, record_date in streams %}
    select
        company_id,
        '{{ stream }}' as stream,
        {{ id_column }} as record_id,
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
