-- Spend kept out of the GBP-only fact because of its currency: one row per document, amounts in
-- the document's own currency. Nothing is converted, nothing is dropped silently.
-- A table kept by document (macro excluded_spend_documents): a company whose base currency
-- changes is re-classified on the next build.
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'stream', 'record_id'],
        marker_column='currency_exception_id',
        indexes=[{'columns': ['company_id', 'stream', 'record_id']}],
    )
}}

-- Read only by incremental runs: declared here, so dbt always knows them.
-- depends_on: {{ ref('int_dimension_versions') }}
-- depends_on: {{ ref('int_spend_lines_signed') }}
-- depends_on: {{ ref('stg_sage__purchase_invoices') }}
-- depends_on: {{ ref('stg_sage__purchase_credit_notes') }}
-- depends_on: {{ ref('stg_sage__purchase_quick_entries') }}
-- depends_on: {{ ref('stg_sage__other_payments') }}
{{ excluded_spend_documents(
    ['document_currency_not_gbp', 'company_base_currency_not_gbp'], 'currency_exception_id'
) }}
