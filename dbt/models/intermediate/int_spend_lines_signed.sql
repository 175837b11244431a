-- Every spend stream at line grain, signed (spend positive, credit notes and refunds negative), in
-- the document's currency. Only what depends on the document itself is here; the company's base
-- currency (which can change) is applied downstream in int_spend_lines_unioned, a view.
--
-- Incremental by document: a run reads only the documents whose latest-version row was (re)written
-- since this model's last build (dbt_loaded_at), which includes documents deleted since then, and
-- replaces all lines of each such document (strategy replace_documents). A changed document with
-- no spend lines left (deleted, voided into nothing, now a receipt) emits one marker row with a
-- null line_id, so its old lines are removed. A re-run with nothing new changes nothing.
--
-- A document with a field that breaks its type (staging `invalid_fields`: an impossible date, a
-- NaN amount, a malformed line; the loader quarantines these, so only rows landed before it can
-- have them) keeps no line: its figures would be wrong or partial. rpt_invalid_values lists it.
{{
    config(
        materialized='incremental',
        incremental_strategy='replace_documents',
        unique_key=['company_id', 'stream', 'record_id'],
        indexes=[
            {'columns': ['company_id', 'stream', 'record_id']},
            {'columns': ['company_id', 'contact_id']},
            {'columns': ['company_id', 'ledger_account_id']},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

{%- set loaded_after = incremental_watermark('dbt_loaded_at') %}

with

{#- The staging models of the spend streams (macro sage_streams, from the registry), headers and
    lines, each cut to the rows rewritten since this table's last build. #}
{%- set inputs = [] %}
{%- for stream in sage_streams() if stream.is_spend %}
    {%- do inputs.append('stg_sage__' ~ stream.name) %}
    {%- if stream.lines_model %}{% do inputs.append(stream.lines_model) %}{% endif %}
{%- endfor %}
{%- for model in inputs %}
    {{ model | replace('stg_sage__', '') }} as (
        select * from {{ ref(model) }}
        {% if is_incremental() %}where dbt_loaded_at > {{ loaded_after }}{% endif %}
    ),

{% endfor -%}
-- Left joins from the header: every changed document yields at least one row (a marker with a
-- null line_id when it has no spend line), see the macro get_incremental_replace_documents_sql.
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
        headers.first_synced_at,
        headers.last_changed_at,
        headers.dbt_loaded_at
    from purchase_invoices as headers
    left join purchase_invoice_lines as lines
        on headers.company_id = lines.company_id
            and headers.record_id = lines.record_id
            and not headers.is_deleted
            and headers.invalid_fields is null
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
        headers.first_synced_at,
        headers.last_changed_at,
        headers.dbt_loaded_at
    from purchase_credit_notes as headers
    left join purchase_credit_note_lines as lines
        on headers.company_id = lines.company_id
            and headers.record_id = lines.record_id
            and not headers.is_deleted
            and headers.invalid_fields is null
),

-- A quick entry has no lines: the header is the line.
quick_entry_lines as (
    select
        company_id,
        'purchase_quick_entries' as stream,
        transaction_type,
        record_id,
        case when not is_deleted and invalid_fields is null then record_id end as line_id,
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
        first_synced_at,
        last_changed_at,
        dbt_loaded_at
    from purchase_quick_entries
),

-- OTHER_RECEIPT / OTHER_RECEIPT_REFUND are income, not spend: they keep only their marker row.
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
        headers.first_synced_at,
        headers.last_changed_at,
        headers.dbt_loaded_at
    from other_payments as headers
    left join other_payment_lines as lines
        on headers.company_id = lines.company_id
            and headers.record_id = lines.record_id
            and not headers.is_deleted
            and headers.invalid_fields is null
            and headers.transaction_type in ('OTHER_PAYMENT', 'OTHER_PAYMENT_REFUND')
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

signed as (
    select
        company_id,
        stream,
        transaction_type,
        record_id,
        line_id,
        line_number,
        document_number,
        transaction_date,
        document_status,
        is_fully_paid,
        contact_id,
        contact_name,
        description,
        reference,
        ledger_account_id,
        tax_rate_id,
        currency,
        sign_multiplier,
        sign_multiplier * net_amount as net_amount,
        sign_multiplier * coalesce(tax_amount, 0) as tax_amount,
        sign_multiplier * coalesce(total_amount, net_amount + coalesce(tax_amount, 0)) as total_amount,
        first_synced_at,
        last_changed_at,
        dbt_loaded_at
    from unioned
    -- Marker rows only matter to an incremental run (they are never inserted).
    {% if not is_incremental() %}where line_id is not null{% endif %}
),

final as (
    select * from signed
)

select * from final
