-- Spend documents kept out of the fact because they are void or draft: one row per document.
-- A table kept by document (macro excluded_spend_documents).
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'stream', 'record_id'],
        marker_column='spend_exception_id',
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
{{ excluded_spend_documents(['void', 'draft'], 'spend_exception_id') }}
