-- One row per ledger account (nominal code) per company, with the spend category its lines get
-- (int_nominal_accounts_categorised), including accounts known only from spend lines.
with

accounts as (
    select * from {{ ref('int_nominal_accounts_categorised') }}
),

final as (
    select
        company_id,
        ledger_account_id,
        nominal_code,
        nominal_code_name,
        ledger_account_displayed_as,
        ledger_account_type,
        ledger_account_group,
        category,
        category_source,
        is_included_in_chart,
        is_known_account,
        first_synced_at,
        last_changed_at
    from accounts
)

select * from final
