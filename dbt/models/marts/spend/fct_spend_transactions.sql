-- GBP spend, one row per spend line. Amounts are in GBP, net of VAT and signed (credits and refunds
-- negative). What is kept out is listed in rpt_spend_exceptions (void, draft) and rpt_currency_exceptions.
--
-- A table, kept incrementally by document (strategy replace_partitions): a build rewrites every
-- line of the documents that changed since its last build (a new version, a deletion, a void:
-- their staging headers) and of the documents with a line on a dimension member that changed
-- (int_dimension_versions: a company's name, completeness or base currency, an account's code,
-- name or category, a supplier's name, a tax rate). So a renamed supplier or account, a
-- re-categorised nominal code or a base-currency change shows after the next build, and no build
-- rewrites the lines nothing touched. A document with no line left is emptied by its marker row.
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'stream', 'record_id'],
        marker_column='line_id',
        indexes=[
            {'columns': ['company_id', 'stream', 'record_id']},
            {'columns': ['company_id', 'transaction_date']},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

-- Read only by incremental runs: declared here, so dbt always knows them.
-- depends_on: {{ ref('int_dimension_versions') }}
-- depends_on: {{ ref('int_spend_lines_signed') }}
-- depends_on: {{ ref('stg_sage__purchase_invoices') }}
-- depends_on: {{ ref('stg_sage__purchase_credit_notes') }}
-- depends_on: {{ ref('stg_sage__purchase_quick_entries') }}
-- depends_on: {{ ref('stg_sage__other_payments') }}
{%- set loaded_after = mart_watermark() %}

with

{% if is_incremental() %}
changed_members as (
    {{ changed_dimension_members(['company', 'nominal_account', 'supplier', 'tax_rate'], loaded_after) }}
),

touched_documents as (
    {{ changed_spend_documents(loaded_after) }}
    union
    {{ documents_of_changed_members('changed_members', {
        'company': none,
        'nominal_account': 'ledger_account_id',
        'supplier': 'contact_id',
        'tax_rate': 'tax_rate_id',
    }) }}
),

{% endif %}
spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
    -- The same rows as `where exclusion_reason is null` (that test is never null), planned right:
    -- exclusion_reason is a case expression without statistics, and PostgreSQL expects `<expr> is
    -- null` to keep 0.5% of the lines, so it joined the dimensions by nested loops (every line
    -- against every contact) and the keyword table by one index probe a line; a boolean
    -- expression it expects to keep half, and hash-joins. 21.6 s -> 8.9 s for a company's
    -- emissions coverage over 2M lines (bench/RESULTS.md, 2026-12-04).
    where coalesce(exclusion_reason is null, false)
    {% if is_incremental() %}
        and (company_id, stream, record_id) in (
            select company_id, stream, record_id from touched_documents
        )
    {% endif %}
),

companies as (
    select * from {{ ref('int_companies_joined') }}
),

nominal_accounts as (
    select * from {{ ref('dim_nominal_accounts') }}
),

tax_rates as (
    select * from {{ ref('stg_sage__tax_rates') }}
),

contacts as (
    select * from {{ ref('stg_sage__contacts') }}
),

lines as (
    select
        {{ surrogate_key([
            'spend_lines.company_id', 'spend_lines.transaction_type',
            'spend_lines.record_id', 'spend_lines.line_id'
        ]) }} as spend_line_id,
        spend_lines.company_id,
        companies.company_name,
        companies.accounts_provider,
        -- false while the company's first (or post-reset) sync is still running: its totals are partial
        coalesce(companies.is_initial_sync_complete, false) as is_company_data_complete,
        spend_lines.record_id,
        spend_lines.line_id,
        spend_lines.stream,
        spend_lines.transaction_type,
        spend_lines.transaction_date,
        spend_lines.net_amount as amount,
        spend_lines.tax_amount as vat_amount,
        spend_lines.total_amount as gross_amount,
        spend_lines.currency,
        spend_lines.ledger_account_id,
        nominal_accounts.nominal_code,
        nominal_accounts.nominal_code_name,
        nominal_accounts.ledger_account_type,
        coalesce(nominal_accounts.category, 'uncategorised') as category,
        coalesce(nominal_accounts.category_source, 'none') as category_source,
        spend_lines.contact_id as supplier_id,
        coalesce(contacts.contact_name, spend_lines.contact_name) as supplier_name,
        spend_lines.description as transaction_description,
        spend_lines.tax_rate_id,
        -- Sage UK rate ids. GB_NO_TAX is Sage's "No VAT" rate, used for what is outside the
        -- scope of VAT (wages, rates, fines); a line with no rate at all is 'no_vat'. Any other
        -- id (a custom or retired rate) is 'other' rather than a guess.
        case
            when spend_lines.tax_rate_id is null then 'no_vat'
            when spend_lines.tax_rate_id = 'GB_STANDARD' then 'standard'
            when spend_lines.tax_rate_id = 'GB_LOWER' then 'reduced'
            when spend_lines.tax_rate_id = 'GB_ZERO' then 'zero_rated'
            when spend_lines.tax_rate_id = 'GB_EXEMPT' then 'exempt'
            when spend_lines.tax_rate_id = 'GB_NO_TAX' then 'outside_scope'
            else 'other'
        end as tax_status,
        tax_rates.tax_rate_percentage,
        spend_lines.document_number,
        spend_lines.document_status,
        spend_lines.is_fully_paid,
        spend_lines.first_synced_at,
        spend_lines.last_changed_at,
        -- when this row was last (re)written: the build that wrote it
        now() as dbt_loaded_at
    from spend_lines
    left join companies
        on spend_lines.company_id = companies.company_id
    left join nominal_accounts
        on spend_lines.company_id = nominal_accounts.company_id
            and spend_lines.ledger_account_id = nominal_accounts.ledger_account_id
    left join tax_rates
        on spend_lines.company_id = tax_rates.company_id
            and spend_lines.tax_rate_id = tax_rates.tax_rate_id
    -- A deleted contact's last name is not the supplier any more: the name on the document is.
    left join contacts
        on spend_lines.company_id = contacts.company_id
            and spend_lines.contact_id = contacts.contact_id
            and contacts.is_deleted is not true
),

final as (
    select * from lines
    {% if is_incremental() %}
    union all
    {{ partition_markers('touched_documents', ['company_id', 'stream', 'record_id']) }}
    {% endif %}
)

select * from final
