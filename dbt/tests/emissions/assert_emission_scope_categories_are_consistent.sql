-- The scope mapping seed (emission_scope_categories) says what it means: each row has a known
-- match_on, a scope 1, 2 or 3 and a reason, fills exactly the key columns of its match_on, there is
-- one default row (every in-scope line gets a scope), a
-- Scope 3 row names its category by the GHG Protocol's number and name, and a Scope 1 or 2 row
-- names none, and no two rows share a key (account names compared as lines match them,
-- case-insensitively). Returns each offending row with what is wrong.
with

scope_categories as (
    select * from {{ ref('emission_scope_categories') }}
),

-- GHG Protocol Corporate Value Chain (Scope 3) Standard, Table 5.3
ghg_categories (scope3_category, scope3_category_name) as (
    values
    (1, 'Purchased goods and services'),
    (2, 'Capital goods'),
    (3, 'Fuel- and energy-related activities'),
    (4, 'Upstream transportation and distribution'),
    (5, 'Waste generated in operations'),
    (6, 'Business travel'),
    (7, 'Employee commuting'),
    (8, 'Upstream leased assets'),
    (9, 'Downstream transportation and distribution'),
    (10, 'Processing of sold products'),
    (11, 'Use of sold products'),
    (12, 'End-of-life treatment of sold products'),
    (13, 'Downstream leased assets'),
    (14, 'Franchises'),
    (15, 'Investments')
),

checked as (
    select
        scope_categories.scope_mapping_id,
        case
            when scope_categories.match_on is null
                or scope_categories.match_on
                not in ('ledger_account_type', 'keyword_rule', 'sic_group', 'account_name', 'default')
                then 'match_on is one of ledger_account_type, keyword_rule, sic_group, account_name, default'
            when scope_categories.ghg_scope is null or scope_categories.ghg_scope not in (1, 2, 3)
                then 'ghg_scope is 1, 2 or 3'
            when coalesce(trim(scope_categories.reason), '') = ''
                then 'every row says why'
            when (scope_categories.account_name is not null) <> (scope_categories.match_on = 'account_name')
                then 'account_name is filled exactly when match_on is account_name'
            when (scope_categories.ledger_account_type is not null)
                <> (scope_categories.match_on in ('account_name', 'ledger_account_type'))
                then 'ledger_account_type is filled exactly when match_on is account_name or ledger_account_type'
            when (scope_categories.keyword_rule_id is not null) <> (scope_categories.match_on = 'keyword_rule')
                then 'keyword_rule_id is filled exactly when match_on is keyword_rule'
            when (scope_categories.sic_code is not null) <> (scope_categories.match_on = 'sic_group')
                then 'sic_code is filled exactly when match_on is sic_group'
            when scope_categories.ghg_scope = 3 and ghg_categories.scope3_category is null
                then 'a Scope 3 row needs a GHG Protocol category number and its name'
            when scope_categories.ghg_scope <> 3
                and (scope_categories.scope3_category is not null or scope_categories.scope3_category_name is not null)
                then 'a Scope 1 or 2 row has no Scope 3 category'
        end as problem
    from scope_categories
    left join ghg_categories
        on scope_categories.scope3_category = ghg_categories.scope3_category
            and scope_categories.scope3_category_name = ghg_categories.scope3_category_name
),

final as (
    select
        scope_mapping_id,
        problem
    from checked
    where problem is not null
    union all
    select
        'default' as scope_mapping_id,
        'exactly one default row, found ' || count(*) as problem
    from scope_categories
    where match_on = 'default'
    having count(*) <> 1
    union all
    select
        min(scope_mapping_id),
        'another row has the same key'
    from scope_categories
    where match_on <> 'default'
    group by match_on, lower(trim(account_name)), ledger_account_type, keyword_rule_id, sic_code
    having count(*) > 1
)

select * from final
