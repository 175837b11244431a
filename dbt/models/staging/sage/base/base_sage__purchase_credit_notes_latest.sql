-- Latest version of each purchase credit notes record, maintained incrementally (macro incremental_latest_versions;
-- materialisation and indexes for every base model in dbt_project.yml).
{{ incremental_latest_versions(source('sage', 'purchase_credit_notes'), 'purchase_credit_notes') }}
