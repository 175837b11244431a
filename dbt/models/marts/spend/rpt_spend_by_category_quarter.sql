-- GBP spend per company, calendar quarter and category (from fct_spend_transactions).
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_transactions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{ quarterly_rollup_config('spend_by_category_quarter_id') }}

with

{{ rollup_input('spend', ref('fct_spend_transactions')) }},

aggregated as (
    select
        company_id,
        company_name,
        bool_and(is_company_data_complete) as is_company_data_complete,
        to_char(date_trunc('quarter', transaction_date), 'YYYY-"Q"Q') as quarter,
        cast(date_trunc('quarter', transaction_date) as date) as quarter_start_date,
        category,
        count(*) as line_count,
        count(distinct record_id) as document_count,
        sum(amount) as amount,
        sum(vat_amount) as vat_amount,
        sum(gross_amount) as gross_amount
    from spend
    group by 1, 2, 4, 5, 6
),

rolled_up as (
    select
        {{ surrogate_key(['company_id', 'quarter', 'category']) }} as spend_by_category_quarter_id,
        *,
        -- share of the company's net spend in the quarter; null when the quarter nets to zero
        amount / nullif(sum(amount) over (partition by company_id, quarter), 0) as share_of_quarter_amount
    from aggregated
),

final as (
    {{ rollup_final('rolled_up') }}
)

select * from final
