-- Latest version of each contacts record, maintained incrementally (macro incremental_latest_versions;
-- materialisation and indexes for every base model in dbt_project.yml).
{{ incremental_latest_versions(source('sage', 'contacts'), 'contacts') }}
