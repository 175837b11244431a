-- Latest version of each purchase quick entries record, maintained incrementally (macro incremental_latest_versions;
-- materialisation and indexes for every base model in dbt_project.yml).
{{ incremental_latest_versions(source('sage', 'purchase_quick_entries'), 'purchase_quick_entries') }}
