-- Records whose latest version has a field that breaks its type (staging `invalid_fields`): an
-- impossible date, a non-finite or absurd amount, a malformed link or line. The staging models
-- read such a field as null, and a spend document with one keeps no line in the fact, so one
-- company's bad row never stops or poisons anyone's figures; this is where it shows. The loader
-- quarantines such records (stg_sage__quarantined_records), so rows here landed before it did.
-- A table kept incrementally by record (strategy replace_partitions): a build re-checks the
-- records of the big streams whose latest version was rewritten since its last build, and every
-- record of the small reference streams; a record that is valid again is removed by its marker.
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'stream', 'record_id'],
        marker_column='invalid_value_id',
        indexes=[{'columns': ['company_id', 'stream', 'record_id']}],
    )
}}
{#- Every stream's staging model and the column holding its record id. -#}
{%- set id_columns = {
    'businesses': 'business_id',
    'financial_settings': 'company_id',
    'ledger_accounts': 'ledger_account_id',
    'contacts': 'contact_id',
    'tax_rates': 'tax_rate_id',
} %}

{%- set loaded_after = mart_watermark() %}

with

checked as (
    {%- for stream in sage_streams() %}
        select
            company_id,
            '{{ stream.name }}' as stream,
            {{ id_columns.get(stream.name, 'record_id') }} as record_id,
            invalid_fields,
            last_changed_at
        from {{ ref('stg_sage__' ~ stream.name) }}
        {%- if is_incremental() and stream.is_incremental %}
        where dbt_loaded_at > {{ loaded_after }}
        {%- endif %}
        {%- if not loop.last %}
            union all
        {%- endif %}
    {%- endfor %}
),

listed as (
    select
        {{ surrogate_key(['company_id', 'stream', 'record_id']) }} as invalid_value_id,
        company_id,
        stream,
        record_id,
        invalid_fields,
        last_changed_at,
        -- when this row was last (re)written: the build that wrote it
        now() as dbt_loaded_at
    from checked
    where invalid_fields is not null
),

final as (
    select * from listed
    {% if is_incremental() %}
    union all
    {{ partition_markers('checked', ['company_id', 'stream', 'record_id']) }}
    {% endif %}
)

select * from final
