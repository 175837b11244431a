-- Spend kept out of the GBP-only fact because of its currency: one row per document, amounts in
-- the document's own currency. Nothing is converted, nothing is dropped silently.
-- A view: a company whose base currency changes is re-classified at once.
{{ config(materialized='view') }}

with

spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
    where exclusion_reason in ('document_currency_not_gbp', 'company_base_currency_not_gbp')
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
        {{ surrogate_key(['company_id', 'stream', 'record_id']) }} as currency_exception_id,
        *
    from documents
)

select * from final
