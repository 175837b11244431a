-- Records whose latest version has a field that breaks its type (staging `invalid_fields`): an
-- impossible date, a non-finite or absurd amount, a malformed link or line. The staging models
-- read such a field as null, and a spend document with one keeps no line in the fact, so one
-- company's bad row never stops or poisons anyone's figures; this is where it shows. The loader
-- quarantines such records (stg_sage__quarantined_records), so rows here landed before it did.
-- A view: it costs a build nothing, and it reads what staging holds now.
{#- Every stream's staging model and the column holding its record id. -#}
{%- set id_columns = {
    'businesses': 'business_id',
    'financial_settings': 'company_id',
    'ledger_accounts': 'ledger_account_id',
    'contacts': 'contact_id',
    'tax_rates': 'tax_rate_id',
} %}

with

unioned as (
    {%- for stream in sage_streams() %}
        select
            company_id,
            '{{ stream.name }}' as stream,
            {{ id_columns.get(stream.name, 'record_id') }} as record_id,
            invalid_fields,
            last_changed_at
        from {{ ref('stg_sage__' ~ stream.name) }}
        where invalid_fields is not null
        {%- if not loop.last %}
            union all
        {%- endif %}
    {%- endfor %}
),

final as (
    select
        {{ surrogate_key(['company_id', 'stream', 'record_id']) }} as invalid_value_id,
        company_id,
        stream,
        record_id,
        invalid_fields,
        last_changed_at
    from unioned
)

select * from final
