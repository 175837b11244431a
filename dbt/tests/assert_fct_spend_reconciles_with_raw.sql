-- Per company, the fact's net spend equals the spend computed straight from raw, independently
-- of the staging and intermediate models: latest version per record, not deleted, not VOID or
-- DRAFT, GBP documents of GBP companies, credit notes and refunds negative, no field breaking
-- its declared type (macro sage_invalid_fields: such a document keeps no line). Returns the
-- companies where the two disagree.
--
-- Only companies at rest are compared: none of their sync runs was landing at or after the
-- build started (int_build_started). A company still syncing during the build has raw the
-- models have not read yet; its landing triggers the next build, which reconciles it.
with

build as (
    select build_started_at from {{ ref('int_build_started') }}
),

companies_at_rest as (
    select companies.company_id
    from {{ source('sage_control', 'companies') }} as companies
    where not exists (
            select 1
            from {{ source('sage_control', 'sync_runs') }} as runs
            cross join build
            where runs.company_id = companies.company_id
                and (runs.ended_at >= build.build_started_at or (runs.ended_at is null and runs.status = 'running'))
        )
),

latest_documents as (
    select
        'purchase_invoices' as stream,
        company_id,
        record_id,
        payload,
        'invoice_lines' as lines_key,
        1 as sign,
        {{ sage_invalid_fields('purchase_invoices', 'payload') }} is null as is_sound
    from (
        select distinct on (company_id, record_id) *
        from {{ source('sage', 'purchase_invoices') }}
        order by company_id, record_id, source_updated_at desc nulls last, _extracted_at desc
    ) as invoices
    union all
    select
        'purchase_credit_notes',
        company_id,
        record_id,
        payload,
        'credit_note_lines',
        -1,
        {{ sage_invalid_fields('purchase_credit_notes', 'payload') }} is null
    from (
        select distinct on (company_id, record_id) *
        from {{ source('sage', 'purchase_credit_notes') }}
        order by company_id, record_id, source_updated_at desc nulls last, _extracted_at desc
    ) as credit_notes
    union all
    select
        'purchase_quick_entries',
        company_id,
        record_id,
        -- the header is the line
        payload || jsonb_build_object('quick_lines', jsonb_build_array(payload)),
        'quick_lines',
        case when payload -> 'quick_entry_type' ->> 'id' = 'CREDIT_NOTE' then -1 else 1 end,
        {{ sage_invalid_fields('purchase_quick_entries', 'payload') }} is null
    from (
        select distinct on (company_id, record_id) *
        from {{ source('sage', 'purchase_quick_entries') }}
        order by company_id, record_id, source_updated_at desc nulls last, _extracted_at desc
    ) as quick_entries
    union all
    select
        'other_payments',
        company_id,
        record_id,
        payload,
        'payment_lines',
        case payload -> 'transaction_type' ->> 'id' when 'OTHER_PAYMENT' then 1 when 'OTHER_PAYMENT_REFUND' then -1 end,
        {{ sage_invalid_fields('other_payments', 'payload') }} is null
    from (
        select distinct on (company_id, record_id) *
        from {{ source('sage', 'other_payments') }}
        order by company_id, record_id, source_updated_at desc nulls last, _extracted_at desc
    ) as other_payments
),

-- a document that is not sound may not even have an array of lines
sound_documents as (
    select
        *,
        case
            when is_sound and jsonb_typeof(payload -> lines_key) = 'array' then payload -> lines_key
            else '[]'
        end as lines
    from latest_documents
),

base_currencies as (
    select distinct on (company_id)
        company_id,
        payload -> 'base_currency' ->> 'id' as base_currency
    from {{ source('sage', 'financial_settings') }}
    -- spend of a company that is not connected has no home in the fact either
    where company_id in (select companies_at_rest.company_id from companies_at_rest)
    order by company_id, source_updated_at desc nulls last, _extracted_at desc
),

expected as (
    select
        documents.company_id,
        -- a blank amount is no amount (sound documents hold no other kind of invalid text)
        sum(documents.sign * case
            when line.value ->> 'net_amount' !~ '^[ \t\n\r\f\v]*$' then cast(line.value ->> 'net_amount' as numeric)
        end) as amount
    from sound_documents as documents
    inner join base_currencies
        on documents.company_id = base_currencies.company_id
    cross join lateral jsonb_array_elements(documents.lines) as line (value)
    where documents.sign is not null
        and base_currencies.base_currency = 'GBP'
        and coalesce(documents.payload -> 'currency' ->> 'id', 'GBP') = 'GBP'
        and coalesce(documents.payload -> 'status' ->> 'id', '') not in ('VOID', 'DRAFT')
        and documents.payload ->> 'deleted_at' is null
        and not exists (
            select 1
            from {{ source('sage', 'deletions') }} as deletions
            where deletions.company_id = documents.company_id
                and deletions.stream = documents.stream
                and deletions.record_id = documents.record_id
        )
    group by documents.company_id
),

actual as (
    select
        company_id,
        sum(amount) as amount
    from {{ ref('fct_spend_transactions') }}
    where company_id in (select companies_at_rest.company_id from companies_at_rest)
    group by company_id
)

select
    coalesce(expected.company_id, actual.company_id) as company_id,
    expected.amount as expected_amount,
    actual.amount as actual_amount
from expected
full outer join actual
    on expected.company_id = actual.company_id
where expected.amount is distinct from actual.amount
