-- Latest version of each other payments record, maintained incrementally (macro incremental_latest_versions;
-- materialisation and indexes for every base model in dbt_project.yml).
{{ incremental_latest_versions(source('sage', 'other_payments'), 'other_payments') }}
