-- GBP spend, one row per spend line. Amounts are in GBP, net of VAT and signed (credits and refunds
-- negative). What is kept out is listed in spend_exceptions (void, draft) and currency_exceptions.
with

spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
    where exclusion_reason is null
),

companies as (
    select * from {{ ref('int_companies_joined') }}
),

ledger_accounts as (
    select * from {{ ref('stg_sage__ledger_accounts') }}
),

tax_rates as (
    select * from {{ ref('stg_sage__tax_rates') }}
),

contacts as (
    select * from {{ ref('stg_sage__contacts') }}
),

categories as (
    select * from {{ ref('ledger_account_type_categories') }}
),

final as (
    select
        {{ surrogate_key([
            'spend_lines.company_id', 'spend_lines.transaction_type',
            'spend_lines.record_id', 'spend_lines.line_id'
        ]) }} as spend_line_id,
        spend_lines.company_id,
        companies.company_name,
        companies.accounts_provider,
        spend_lines.record_id,
        spend_lines.line_id,
        spend_lines.transaction_type,
        spend_lines.transaction_date,
        spend_lines.net_amount as amount,
        spend_lines.tax_amount as vat_amount,
        spend_lines.total_amount as gross_amount,
        spend_lines.currency,
        spend_lines.ledger_account_id,
        ledger_accounts.nominal_code,
        ledger_accounts.ledger_account_name as nominal_code_name,
        ledger_accounts.ledger_account_type,
        coalesce(categories.category, 'uncategorised') as category,
        spend_lines.contact_id as supplier_id,
        coalesce(contacts.contact_name, spend_lines.contact_name) as supplier_name,
        spend_lines.description,
        spend_lines.tax_rate_id,
        case
            when spend_lines.tax_rate_id is null then 'no_vat'
            when spend_lines.tax_rate_id = 'GB_STANDARD' then 'standard'
            when spend_lines.tax_rate_id = 'GB_LOWER' then 'reduced'
            when spend_lines.tax_rate_id = 'GB_ZERO' then 'zero_rated'
            when spend_lines.tax_rate_id = 'GB_EXEMPT' then 'exempt'
            when spend_lines.tax_rate_id = 'GB_NO_TAX' then 'no_vat'
            else 'other'
        end as tax_status,
        tax_rates.tax_rate_percentage,
        spend_lines.document_number,
        spend_lines.document_status,
        spend_lines.is_fully_paid,
        spend_lines.first_synced_at,
        spend_lines.last_changed_at
    from spend_lines
    left join companies
        on spend_lines.company_id = companies.company_id
    left join ledger_accounts
        on spend_lines.company_id = ledger_accounts.company_id
        and spend_lines.ledger_account_id = ledger_accounts.ledger_account_id
    left join categories
        on ledger_accounts.ledger_account_type = categories.ledger_account_type
    left join tax_rates
        on spend_lines.company_id = tax_rates.company_id
        and spend_lines.tax_rate_id = tax_rates.tax_rate_id
    left join contacts
        on spend_lines.company_id = contacts.company_id
        and spend_lines.contact_id = contacts.contact_id
)

select * from final
