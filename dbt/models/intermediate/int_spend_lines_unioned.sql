-- Every spend line (int_spend_lines_signed) with the company's base currency applied: the reason,
-- if any, a line is kept out of the GBP spend fact. A view, so a company whose base currency
-- changes is re-classified at once without rebuilding its lines.
with

spend_lines as (
    select * from {{ ref('int_spend_lines_signed') }}
),

companies as (
    select * from {{ ref('int_companies_joined') }}
),

classified as (
    select
        spend_lines.company_id,
        spend_lines.stream,
        spend_lines.transaction_type,
        spend_lines.record_id,
        spend_lines.line_id,
        spend_lines.line_number,
        spend_lines.document_number,
        spend_lines.transaction_date,
        spend_lines.document_status,
        spend_lines.is_fully_paid,
        spend_lines.contact_id,
        spend_lines.contact_name,
        spend_lines.description,
        spend_lines.reference,
        spend_lines.ledger_account_id,
        spend_lines.tax_rate_id,
        coalesce(spend_lines.currency, companies.base_currency) as currency,
        companies.base_currency,
        spend_lines.sign_multiplier,
        spend_lines.net_amount,
        spend_lines.tax_amount,
        spend_lines.total_amount,
        -- First reason wins: a voided EUR invoice is reported as void, not as a currency exception.
        -- An unknown base currency (financial settings not synced yet) is not GBP: nothing is
        -- assumed to be GBP without evidence.
        case
            when spend_lines.document_status = 'VOID' then 'void'
            when spend_lines.document_status = 'DRAFT' then 'draft'
            when coalesce(companies.base_currency <> 'GBP', true) then 'company_base_currency_not_gbp'
            when coalesce(spend_lines.currency, companies.base_currency) <> 'GBP' then 'document_currency_not_gbp'
        end as exclusion_reason,
        spend_lines.first_synced_at,
        spend_lines.last_changed_at
    from spend_lines
    left join companies
        on spend_lines.company_id = companies.company_id
),

final as (
    select * from classified
)

select * from final
