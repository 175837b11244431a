-- Keeps the uncategorised share of spend visible: warns (never fails the build) for each company
-- whose uncategorised net spend is above var uncategorised_share_warn_above of its net spend.
-- The fix is a row in seeds/company_category_overrides.csv or the UK default chart seed.
{{ config(severity='warn') }}

with

spend as (
    select
        company_id,
        sum(abs(amount)) filter (where category = 'uncategorised') as uncategorised_amount,
        sum(abs(amount)) as total_amount,
        count(*) filter (where category = 'uncategorised') as uncategorised_lines
    from {{ ref('fct_spend_transactions') }}
    group by company_id
)

select
    company_id,
    uncategorised_lines,
    uncategorised_amount,
    total_amount,
    round(uncategorised_amount / nullif(total_amount, 0), 4) as uncategorised_share
from spend
where coalesce(uncategorised_amount, 0) > {{ var('uncategorised_share_warn_above', 0.2) }} * total_amount
