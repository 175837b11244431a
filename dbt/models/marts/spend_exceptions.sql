-- Spend documents kept out of the fact because they are void or draft: one row per document.
-- A view: always what the line layer holds now.
{{ config(materialized='view') }}

with

spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
    where exclusion_reason in ('void', 'draft')
),

documents as (
    select
        company_id,
        stream,
        record_id,
        transaction_type,
        document_number,
        transaction_date,
        document_status,
        currency,
        base_currency,
        exclusion_reason as reason,
        count(*) as line_count,
        sum(net_amount) as amount,
        sum(tax_amount) as vat_amount,
        sum(total_amount) as gross_amount
    from spend_lines
    group by
        company_id, stream, record_id, transaction_type, document_number, transaction_date,
        document_status, currency, base_currency, exclusion_reason
),

final as (
    select
        {{ surrogate_key(['company_id', 'stream', 'record_id']) }} as spend_exception_id,
        *
    from documents
)

select * from final
