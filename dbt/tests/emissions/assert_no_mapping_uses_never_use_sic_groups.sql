-- No rule, default or override may resolve to a group that must never be used (seed
-- emission_sic_group_flags.is_never_use: 46 wholesale, 7 metal ores, 65.3 pension funding,
-- 68.2IMP imputed rent; MAPPING.md §3 and §6), and no emissions row does. Returns each offender.
with

never_use as (
    select sic_code from {{ ref('emission_sic_group_flags') }}
    where is_never_use
),

mappings as (
    select
        'emission_chart_defaults' as source,
        chart || ' ' || nominal_code as rule,
        sic_code
    from {{ ref('emission_chart_defaults') }}
    union all
    select
        'emission_keyword_rules',
        keyword_rule_id,
        sic_code
    from {{ ref('emission_keyword_rules') }}
    union all
    select
        'emission_account_overrides',
        company_id || ' ' || coalesce(ledger_account_id, nominal_code),
        sic_code
    from {{ ref('emission_account_overrides') }}
    union all
    select
        'emission_line_overrides',
        company_id || ' ' || record_id || ' ' || line_id,
        sic_code
    from {{ ref('emission_line_overrides') }}
    union all
    select distinct
        'int_emission_account_mappings',
        mapping_rule,
        sic_code
    from {{ ref('int_emission_account_mappings') }}
    union all
    select distinct
        'fct_spend_emissions',
        mapping_rule,
        sic_code
    from {{ ref('fct_spend_emissions') }}
)

select mappings.*
from mappings
inner join never_use
    on mappings.sic_code = never_use.sic_code
