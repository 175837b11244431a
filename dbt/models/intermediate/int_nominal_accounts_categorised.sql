-- One row per ledger account (nominal code) per company, with the spend category its lines get.
-- Accounts that spend lines point at but that were never synced are listed too (is_known_account
-- false, category 'uncategorised'), so every fact line has a dimension row.
-- Below the marts, so the dimension (dim_nominal_accounts) and the emission mappings
-- (int_emission_account_mappings) read the same accounts and can never disagree.
with recursive

ledger_accounts as (
    select * from {{ ref('stg_sage__ledger_accounts') }}
),

-- read twice below: not materialized, so each read can use the table's index
spend_lines as not materialized (
    select * from {{ ref('int_spend_lines_signed') }}
),

overrides as (
    select * from {{ ref('company_category_overrides') }}
),

default_chart as (
    select * from {{ ref('uk_default_chart_categories') }}
),

type_categories as (
    select * from {{ ref('ledger_account_type_categories') }}
),

-- The distinct (company_id, ledger_account_id) pairs of the spend lines, walked one pair at a time
-- along the index on those columns (a skip scan: one index probe per pair). A `select distinct`
-- reads every line, and this table is rebuilt daily: at 5M lines that scan was most of its build.
used_accounts as (
    (
        select
            company_id,
            ledger_account_id
        from spend_lines
        where ledger_account_id is not null
        order by company_id, ledger_account_id
        limit 1
    )
    union all
    select
        next_pair.company_id,
        next_pair.ledger_account_id
    from used_accounts
    cross join lateral (
        select
            spend_lines.company_id,
            spend_lines.ledger_account_id
        from spend_lines
        where spend_lines.ledger_account_id is not null
            and (spend_lines.company_id, spend_lines.ledger_account_id)
            > (used_accounts.company_id, used_accounts.ledger_account_id)
        order by spend_lines.company_id, spend_lines.ledger_account_id
        limit 1
    ) as next_pair
),

unknown_accounts as (
    select
        used_accounts.company_id,
        used_accounts.ledger_account_id
    from used_accounts
    where not exists (
            select 1
            from ledger_accounts
            where ledger_accounts.company_id = used_accounts.company_id
                and ledger_accounts.ledger_account_id = used_accounts.ledger_account_id
        )
),

accounts as (
    select
        company_id,
        ledger_account_id,
        {{ nominal_code_text('nominal_code') }} as nominal_code,
        ledger_account_name as nominal_code_name,
        ledger_account_displayed_as,
        ledger_account_type,
        ledger_account_group,
        is_included_in_chart,
        true as is_known_account,
        first_synced_at,
        last_changed_at
    from ledger_accounts
    union all
    select
        company_id,
        ledger_account_id,
        cast(null as text),
        cast(null as text),
        cast(null as text),
        cast(null as text),
        cast(null as text),
        cast(null as boolean),
        false,
        cast(null as timestamptz),
        cast(null as timestamptz)
    from unknown_accounts
),

categorised as (
    select
        accounts.*,
        coalesce(
            overrides.category, default_chart.category, type_categories.category, 'uncategorised'
        ) as category,
        case
            when overrides.category is not null then 'company_override'
            when default_chart.category is not null then 'uk_default_chart'
            when type_categories.category is not null then 'ledger_account_type'
            else 'none'
        end as category_source
    from accounts
    left join overrides
        on accounts.company_id = overrides.company_id
            and accounts.nominal_code = overrides.nominal_code
    left join default_chart
        on accounts.nominal_code = default_chart.nominal_code
            and lower(trim(accounts.nominal_code_name)) = lower(trim(default_chart.nominal_code_name))
    left join type_categories
        on accounts.ledger_account_type = type_categories.ledger_account_type
),

final as (
    select * from categorised
)

select * from final
