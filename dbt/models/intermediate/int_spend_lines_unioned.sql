-- Every spend stream at line grain, signed so that spend is positive and credits/refunds negative,
-- with the reason (if any) a line is kept out of the GBP spend fact. Deleted documents are dropped:
-- they are no longer in the books. OTHER_RECEIPT / OTHER_RECEIPT_REFUND are income, not spend.
with

purchase_invoices as (
    select * from {{ ref('stg_sage__purchase_invoices') }}
),

purchase_invoice_lines as (
    select * from {{ ref('stg_sage__purchase_invoice_lines') }}
),

purchase_credit_notes as (
    select * from {{ ref('stg_sage__purchase_credit_notes') }}
),

purchase_credit_note_lines as (
    select * from {{ ref('stg_sage__purchase_credit_note_lines') }}
),

purchase_quick_entries as (
    select * from {{ ref('stg_sage__purchase_quick_entries') }}
),

other_payments as (
    select * from {{ ref('stg_sage__other_payments') }}
),

other_payment_lines as (
    select * from {{ ref('stg_sage__other_payment_lines') }}
),

companies as (
    select * from {{ ref('int_companies_joined') }}
),

invoice_lines as (
    select
        headers.company_id,
        'purchase_invoices' as stream,
        headers.transaction_type,
        headers.record_id,
        lines.line_id,
        lines.line_number,
        headers.document_number,
        headers.transaction_date,
        headers.document_status,
        headers.document_status = 'PAID' as is_fully_paid,
        headers.contact_id,
        headers.contact_name,
        coalesce(lines.description, headers.reference) as description,
        headers.reference,
        lines.ledger_account_id,
        lines.tax_rate_id,
        headers.currency,
        1 as sign_multiplier,
        lines.net_amount,
        lines.tax_amount,
        lines.total_amount,
        headers.is_deleted,
        headers.first_synced_at,
        headers.last_changed_at
    from purchase_invoices as headers
    inner join purchase_invoice_lines as lines
        on headers.company_id = lines.company_id
        and headers.record_id = lines.record_id
),

credit_note_lines as (
    select
        headers.company_id,
        'purchase_credit_notes' as stream,
        headers.transaction_type,
        headers.record_id,
        lines.line_id,
        lines.line_number,
        headers.document_number,
        headers.transaction_date,
        headers.document_status,
        headers.document_status = 'PAID' as is_fully_paid,
        headers.contact_id,
        headers.contact_name,
        coalesce(lines.description, headers.reference) as description,
        headers.reference,
        lines.ledger_account_id,
        lines.tax_rate_id,
        headers.currency,
        -- Sage keeps credit note amounts positive; a credit reduces spend.
        -1 as sign_multiplier,
        lines.net_amount,
        lines.tax_amount,
        lines.total_amount,
        headers.is_deleted,
        headers.first_synced_at,
        headers.last_changed_at
    from purchase_credit_notes as headers
    inner join purchase_credit_note_lines as lines
        on headers.company_id = lines.company_id
        and headers.record_id = lines.record_id
),

-- A quick entry has no lines: the header is the line.
quick_entry_lines as (
    select
        company_id,
        'purchase_quick_entries' as stream,
        transaction_type,
        record_id,
        record_id as line_id,
        1 as line_number,
        document_number,
        transaction_date,
        document_status,
        document_status = 'PAID' as is_fully_paid,
        contact_id,
        contact_name,
        coalesce(details, reference) as description,
        reference,
        ledger_account_id,
        tax_rate_id,
        currency,
        case
            when quick_entry_type = 'CREDIT_NOTE'
                or transaction_type = 'PURCHASE_QUICK_ENTRY_CREDIT_NOTE' then -1
            else 1
        end as sign_multiplier,
        net_amount,
        tax_amount,
        total_amount,
        is_deleted,
        first_synced_at,
        last_changed_at
    from purchase_quick_entries
),

payment_lines as (
    select
        headers.company_id,
        'other_payments' as stream,
        headers.transaction_type,
        headers.record_id,
        lines.line_id,
        lines.line_number,
        headers.document_number,
        headers.transaction_date,
        cast(null as text) as document_status,
        -- A payment is money already out of the bank.
        true as is_fully_paid,
        headers.contact_id,
        headers.contact_name,
        coalesce(lines.details, headers.reference) as description,
        headers.reference,
        lines.ledger_account_id,
        lines.tax_rate_id,
        -- Other payments are always in the base currency (they carry no currency fields).
        cast(null as text) as currency,
        case when headers.transaction_type = 'OTHER_PAYMENT_REFUND' then -1 else 1 end as sign_multiplier,
        lines.net_amount,
        lines.tax_amount,
        lines.total_amount,
        headers.is_deleted,
        headers.first_synced_at,
        headers.last_changed_at
    from other_payments as headers
    inner join other_payment_lines as lines
        on headers.company_id = lines.company_id
        and headers.record_id = lines.record_id
    where headers.transaction_type in ('OTHER_PAYMENT', 'OTHER_PAYMENT_REFUND')
),

unioned as (
    select * from invoice_lines
    union all
    select * from credit_note_lines
    union all
    select * from quick_entry_lines
    union all
    select * from payment_lines
),

classified as (
    select
        unioned.company_id,
        unioned.stream,
        unioned.transaction_type,
        unioned.record_id,
        unioned.line_id,
        unioned.line_number,
        unioned.document_number,
        unioned.transaction_date,
        unioned.document_status,
        unioned.is_fully_paid,
        unioned.contact_id,
        unioned.contact_name,
        unioned.description,
        unioned.reference,
        unioned.ledger_account_id,
        unioned.tax_rate_id,
        coalesce(unioned.currency, companies.base_currency) as currency,
        companies.base_currency,
        unioned.sign_multiplier,
        unioned.sign_multiplier * unioned.net_amount as net_amount,
        unioned.sign_multiplier * coalesce(unioned.tax_amount, 0) as tax_amount,
        unioned.sign_multiplier
            * coalesce(unioned.total_amount, unioned.net_amount + coalesce(unioned.tax_amount, 0))
            as total_amount,
        -- First reason wins: a voided EUR invoice is reported as void, not as a currency exception.
        -- An unknown base currency (financial settings not synced yet) is not GBP: nothing is
        -- assumed to be GBP without evidence.
        case
            when unioned.document_status = 'VOID' then 'void'
            when unioned.document_status = 'DRAFT' then 'draft'
            when companies.base_currency is distinct from 'GBP' then 'company_base_currency_not_gbp'
            when coalesce(unioned.currency, companies.base_currency) <> 'GBP' then 'document_currency_not_gbp'
        end as exclusion_reason,
        unioned.first_synced_at,
        unioned.last_changed_at
    from unioned
    left join companies
        on unioned.company_id = companies.company_id
    where not unioned.is_deleted
),

final as (
    select * from classified
)

select * from final
