-- One row per ledger account per company (int_nominal_accounts_categorised): the SIC group its spend is
-- mapped to, or why it is out of scope, or 'unmapped'. Keyed on what the account is (its name and
-- ledger_account_type), with the nominal code only as a fallback: the same code means different
-- things in different Sage charts (7200 is "Electricity" in Sage 50, "Gas and electric" in Sage
-- Accounting). First match wins (mapping_rule):
--   1. account_override      seed emission_account_overrides (by ledger_account_id, else nominal code)
--   2. ledger_account_type   income, balance sheet, tax and depreciation accounts buy nothing
--   3. chart_account_name    the account's name is a default account of a Sage chart
--   4. account_name_keyword  a keyword rule matches the name (renamed or added accounts)
--   5. chart_nominal_code    the code, where every chart that has it agrees on its mapping
--   6. unmapped              its £ is reported with no kg, never as zero
-- is_refinable: a mixed account (travel, office costs, motor expenses...) or an unmapped one,
-- whose lines a description or supplier keyword may map more precisely (fct_spend_emissions).
-- A table rebuilt on each run (one row per account): a renamed account or an edited seed
-- re-maps all history at once.
with

accounts as (
    select * from {{ ref('int_nominal_accounts_categorised') }}
),

overrides as (
    select * from {{ ref('emission_account_overrides') }}
),

account_types as (
    select * from {{ ref('emission_ledger_account_types') }}
),

chart_defaults as (
    select * from {{ ref('emission_chart_defaults') }}
),

keyword_rules as (
    select * from {{ ref('emission_keyword_rules') }}
),

-- One default per account name (and type): the first chart that has it.
name_defaults as (
    select distinct on (lower(trim(account_name)), ledger_account_type)
        lower(trim(account_name)) as account_name_key,
        ledger_account_type,
        chart,
        sic_code,
        out_of_scope_reason,
        confidence,
        is_mixed
    from chart_defaults
    order by lower(trim(account_name)), ledger_account_type, chart_priority
),

-- A code alone decides only where all charts that use it agree.
code_defaults as (
    select
        nominal_code,
        min(sic_code) as sic_code,
        min(out_of_scope_reason) as out_of_scope_reason,
        bool_or(is_mixed) as is_mixed
    from chart_defaults
    group by nominal_code
    having count(distinct concat_ws('|', sic_code, out_of_scope_reason)) = 1
),

name_keywords as (
    select distinct on (accounts.company_id, accounts.ledger_account_id)
        accounts.company_id,
        accounts.ledger_account_id,
        keyword_rules.keyword_rule_id,
        keyword_rules.sic_code,
        keyword_rules.out_of_scope_reason,
        keyword_rules.confidence,
        keyword_rules.is_mixed
    from accounts
    inner join keyword_rules
        on {{ emission_keyword_matches('accounts.nominal_code_name', 'keyword_rules.pattern') }}
    order by accounts.company_id, accounts.ledger_account_id, keyword_rules.priority, keyword_rules.keyword_rule_id
),

candidates as (
    select
        accounts.company_id,
        accounts.ledger_account_id,
        accounts.nominal_code,
        accounts.nominal_code_name,
        accounts.ledger_account_type,
        coalesce(id_overrides.sic_code, code_overrides.sic_code) as override_sic_code,
        coalesce(id_overrides.out_of_scope_reason, code_overrides.out_of_scope_reason) as override_reason,
        (id_overrides.company_id is not null or code_overrides.company_id is not null) as has_override,
        account_types.is_in_scope as is_type_in_scope,
        account_types.out_of_scope_reason as type_reason,
        name_defaults.chart as name_chart,
        name_defaults.sic_code as name_sic_code,
        name_defaults.out_of_scope_reason as name_reason,
        name_defaults.confidence as name_confidence,
        name_defaults.is_mixed as name_is_mixed,
        name_defaults.account_name_key is not null as has_name_default,
        name_keywords.keyword_rule_id,
        name_keywords.sic_code as keyword_sic_code,
        name_keywords.out_of_scope_reason as keyword_reason,
        name_keywords.confidence as keyword_confidence,
        name_keywords.is_mixed as keyword_is_mixed,
        code_defaults.sic_code as code_sic_code,
        code_defaults.out_of_scope_reason as code_reason,
        code_defaults.is_mixed as code_is_mixed,
        code_defaults.nominal_code is not null as has_code_default
    from accounts
    left join overrides as id_overrides
        on accounts.company_id = id_overrides.company_id
            and accounts.ledger_account_id = id_overrides.ledger_account_id
    left join overrides as code_overrides
        on accounts.company_id = code_overrides.company_id
            and code_overrides.ledger_account_id is null
            and accounts.nominal_code = code_overrides.nominal_code
    left join account_types
        on accounts.ledger_account_type = account_types.ledger_account_type
    left join name_defaults
        on lower(trim(accounts.nominal_code_name)) = name_defaults.account_name_key
            and accounts.ledger_account_type is not distinct from name_defaults.ledger_account_type
    left join name_keywords
        on accounts.company_id = name_keywords.company_id
            and accounts.ledger_account_id = name_keywords.ledger_account_id
    left join code_defaults
        on accounts.nominal_code = code_defaults.nominal_code
),

ruled as (
    select
        *,
        case
            when has_override then 'account_override'
            when not is_type_in_scope then 'ledger_account_type'
            when has_name_default then 'chart_account_name'
            when keyword_rule_id is not null then 'account_name_keyword'
            when has_code_default then 'chart_nominal_code'
            else 'unmapped'
        end as mapping_rule
    from candidates
),

final as (
    select
        company_id,
        ledger_account_id,
        nominal_code,
        nominal_code_name,
        ledger_account_type,
        mapping_rule,
        case mapping_rule
            when 'account_override' then override_sic_code
            when 'chart_account_name' then name_sic_code
            when 'account_name_keyword' then keyword_sic_code
            when 'chart_nominal_code' then code_sic_code
        end as sic_code,
        case mapping_rule
            when 'account_override' then override_reason
            when 'ledger_account_type' then type_reason
            when 'chart_account_name' then name_reason
            when 'account_name_keyword' then keyword_reason
            when 'chart_nominal_code' then code_reason
        end as out_of_scope_reason,
        case mapping_rule
            when 'account_override' then 'high'
            when 'ledger_account_type' then 'high'
            when 'chart_account_name' then name_confidence
            when 'account_name_keyword' then keyword_confidence
            when 'chart_nominal_code' then 'low'
            else 'none'
        end as mapping_confidence,
        case when mapping_rule = 'chart_account_name' then name_chart end as matched_chart,
        case when mapping_rule = 'account_name_keyword' then keyword_rule_id end as keyword_rule_id,
        case mapping_rule
            when 'account_override' then false
            when 'ledger_account_type' then false
            when 'chart_account_name' then name_is_mixed
            when 'account_name_keyword' then keyword_is_mixed
            when 'chart_nominal_code' then code_is_mixed
            else true
        end as is_refinable
    from ruled
)

select * from final
