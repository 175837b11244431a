-- Latest version of each other payments record, maintained incrementally (see macro incremental_latest_versions).
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

{{ incremental_latest_versions(source('sage_raw', 'other_payments'), 'other_payments') }}
