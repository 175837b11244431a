-- GBP spend per company, calendar quarter, supplier and category: which suppliers the money went
-- to and what it was booked as (README query 2 reads it, so "top suppliers over a year, with their
-- categories" adds up a few hundred stored rows instead of every line of the year). Suppliers are
-- keyed as in rpt_spend_by_supplier_quarter; summed over categories, a supplier's rows give that
-- mart's amounts.
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions, macros
-- rollup_input and touched_quarters), like the other quarterly rollups.
{{ quarterly_rollup_config('spend_by_supplier_category_quarter_id') }}

with

{{ rollup_input('spend', ref('fct_spend_transactions')) }},

keyed as (
    select
        *,
        {{ supplier_key() }} as supplier_key
    from spend
),

aggregated as (
    select
        company_id,
        company_name,
        bool_and(is_company_data_complete) as is_company_data_complete,
        to_char(date_trunc('quarter', transaction_date), 'YYYY-"Q"Q') as quarter,
        cast(date_trunc('quarter', transaction_date) as date) as quarter_start_date,
        supplier_key,
        category,
        max(supplier_id) as supplier_id,
        coalesce(max(supplier_name), 'unknown supplier') as supplier_name,
        count(*) as line_count,
        count(distinct record_id) as document_count,
        sum(amount) as amount,
        sum(vat_amount) as vat_amount,
        sum(gross_amount) as gross_amount
    from keyed
    group by 1, 2, 4, 5, 6, 7
),

rolled_up as (
    select
        {{ surrogate_key(['company_id', 'quarter', 'supplier_key', 'category']) }}
            as spend_by_supplier_category_quarter_id,
        *
    from aggregated
),

final as (
    {{ rollup_final('rolled_up') }}
)

select * from final
