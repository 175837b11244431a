-- The change log of every dimension the stored marts copy onto their rows: one row per dimension
-- member (a company, an account's category, an account's emission mapping, a supplier's name, a
-- tax rate, a line override, a factor, a price period, a SIC group's flags, the keyword rules,
-- the factor set in use, a scope mapping row), with a hash of exactly the attributes the marts take from it and
-- dbt_loaded_at, when that hash last changed. A build rewrites only the members whose hash
-- changed (or that are gone: their row then has a null hash), so the incremental marts find what
-- a rename, a re-categorisation, an override or a factor touches by reading the rows stamped
-- since their own last build, not by comparing every line.
--
-- A change log: after an incremental build it also holds the members that are gone, which a full
-- refresh does not (they changed nothing since). Suppliers are read incrementally (the contacts
-- whose latest version was rewritten since this table's last build); every other dimension is
-- small and compared in full.
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['dimension', 'company_id', 'dimension_key'],
        indexes=[
            {'columns': ['dimension', 'company_id', 'dimension_key'], 'unique': True},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

{%- set contacts_loaded_after = incremental_watermark('dbt_loaded_at') %}

with

companies as (
    select * from {{ ref('int_companies_joined') }}
),

accounts as (
    select * from {{ ref('int_nominal_accounts_categorised') }}
),

account_mappings as (
    select * from {{ ref('int_emission_account_mappings') }}
),

contacts as (
    select * from {{ ref('stg_sage__contacts') }}
    {% if is_incremental() %}where dbt_loaded_at > {{ contacts_loaded_after }}{% endif %}
),

tax_rates as (
    select * from {{ ref('stg_sage__tax_rates') }}
),

line_overrides as (
    select * from {{ ref('emission_line_overrides') }}
),

factors as (
    select * from {{ ref('int_emission_factors') }}
),

price_periods as (
    select * from {{ ref('int_emission_price_periods') }}
),

sic_group_flags as (
    select * from {{ ref('emission_sic_group_flags') }}
),

keyword_rules as (
    select * from {{ ref('emission_keyword_rules') }}
),

scope_categories as (
    select * from {{ ref('emission_scope_categories') }}
),

-- Global members (factors, price periods...) have company_id '' (a key column is never null).
current_versions as (
    select
        'company' as dimension,
        company_id,
        company_id as dimension_key,
        md5(cast(row(company_name, accounts_provider, is_initial_sync_complete, base_currency) as text))
            as attributes_hash
    from companies
    union all
    select
        'nominal_account',
        company_id,
        ledger_account_id,
        md5(cast(row(nominal_code, nominal_code_name, ledger_account_type, category, category_source) as text))
    from accounts
    union all
    select
        'emission_account_mapping',
        company_id,
        ledger_account_id,
        md5(cast(row(
            mapping_rule, sic_code, out_of_scope_reason, mapping_confidence, keyword_rule_id, is_refinable
        ) as text))
    from account_mappings
    union all
    select
        'supplier',
        company_id,
        contact_id,
        md5(cast(row(case when is_deleted is not true then contact_name end) as text))
    from contacts
    union all
    select
        'tax_rate',
        company_id,
        tax_rate_id,
        md5(cast(row(tax_rate_percentage) as text))
    from tax_rates
    union all
    select
        'emission_line_override',
        company_id,
        record_id,
        md5(string_agg(cast(row(line_id, sic_code, out_of_scope_reason) as text), ',' order by line_id))
    from line_overrides
    group by company_id, record_id
    union all
    select
        'emission_factor',
        '',
        sic_code || '/' || factor_year,
        md5(cast(row(factor_set, sic_category_name, kgco2e_per_gbp) as text))
    from factors
    union all
    select
        'emission_factor_set',
        '',
        '',
        md5(coalesce(min(factor_set), ''))
    from factors
    union all
    select
        'emission_price_period',
        '',
        factor_set || '/' || to_char(spend_month, 'YYYY-MM'),
        md5(cast(row(factor_year, deflator, price_adjustment, price_index_period, is_before_factor_years) as text))
    from price_periods
    union all
    select
        'emission_sic_group',
        '',
        sic_code,
        md5(cast(row(scope_coverage) as text))
    from sic_group_flags
    union all
    select
        'emission_keyword_rules',
        '',
        '',
        md5(coalesce(string_agg(cast(row(
            keyword_rule_id, priority, pattern, sic_code, out_of_scope_reason, confidence, is_mixed
        ) as text), ',' order by keyword_rule_id), ''))
    from keyword_rules
    union all
    -- what a row matches and what it gives a line (its reason is in the seed, not on the lines)
    select
        'emission_scope_category',
        '',
        scope_mapping_id,
        md5(cast(row(
            match_on, lower(trim(account_name)), ledger_account_type, keyword_rule_id, sic_code,
            ghg_scope, scope3_category, scope3_category_name
        ) as text))
    from scope_categories
),

stored as (
    {% if is_incremental() %}
        select * from {{ this }}
    {% else %}
        -- a first build: nothing stored, every member is new
        select
            dimension,
            company_id,
            dimension_key,
            attributes_hash
        from current_versions
        where false
    {% endif %}
),

changed as (
    select current_versions.*
    from current_versions
    left join stored
        on current_versions.dimension = stored.dimension
            and current_versions.company_id = stored.company_id
            and current_versions.dimension_key = stored.dimension_key
    -- new, back after being gone, or changed (a current hash is never null)
    where stored.attributes_hash is null
        or stored.attributes_hash <> current_versions.attributes_hash
    union all
    -- gone since the last build (suppliers are read incrementally: a contact is never gone)
    select
        stored.dimension,
        stored.company_id,
        stored.dimension_key,
        cast(null as text)
    from stored
    where stored.dimension <> 'supplier'
        and stored.attributes_hash is not null
        and not exists (
            select 1
            from current_versions
            where current_versions.dimension = stored.dimension
                and current_versions.company_id = stored.company_id
                and current_versions.dimension_key = stored.dimension_key
        )
),

final as (
    select
        dimension,
        company_id,
        dimension_key,
        attributes_hash,
        now() as dbt_loaded_at
    from changed
)

select * from final
