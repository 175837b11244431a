-- Every calendar quarter each spend document has ever had a line in (int_spend_lines_signed),
-- append-only: a document moved to another quarter, voided or deleted keeps its old pairs. The
-- quarterly rollups read it to find the company-quarters a changed document leaves, which the
-- line tables no longer show once its lines are replaced. Kept incrementally from the lines
-- rewritten since this table's last build.
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['company_id', 'stream', 'record_id', 'quarter_start_date'],
        indexes=[
            {'columns': ['company_id', 'stream', 'record_id', 'quarter_start_date'], 'unique': True},
        ],
    )
}}

{%- set loaded_after = incremental_watermark('dbt_loaded_at') %}

with

spend_lines as (
    select * from {{ ref('int_spend_lines_signed') }}
    {% if is_incremental() %}where dbt_loaded_at > {{ loaded_after }}{% endif %}
),

pairs as (
    select distinct
        company_id,
        stream,
        record_id,
        cast(date_trunc('quarter', transaction_date) as date) as quarter_start_date
    from spend_lines
    where transaction_date is not null
),

final as (
    select
        *,
        now() as dbt_loaded_at
    from pairs
)

select * from final
