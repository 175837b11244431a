-- Latest version of each purchase invoices record, maintained incrementally (see macro incremental_latest_versions).
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['company_id', 'record_id'],
        indexes=[
            {'columns': ['company_id', 'record_id'], 'unique': True},
            {'columns': ['last_landed_at']},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

{{ incremental_latest_versions(source('sage_raw', 'purchase_invoices'), 'purchase_invoices') }}
