-- GBP spend per company, calendar quarter and category (from fct_spend_transactions).
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_transactions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'quarter_start_date'],
        marker_column='spend_by_category_quarter_id',
        indexes=[
            {'columns': ['company_id', 'quarter']},
            {'columns': ['quarter']},
        ],
    )
}}

-- Read only by incremental runs: declared here, so dbt always knows them.
-- depends_on: {{ ref('int_dimension_versions') }}
-- depends_on: {{ ref('int_spend_document_quarters') }}
-- depends_on: {{ ref('stg_sage__purchase_invoices') }}
-- depends_on: {{ ref('stg_sage__purchase_credit_notes') }}
-- depends_on: {{ ref('stg_sage__purchase_quick_entries') }}
-- depends_on: {{ ref('stg_sage__other_payments') }}
{%- set loaded_after = incremental_watermark('dbt_loaded_at') %}

with

{% if is_incremental() %}
touched_quarters as (
    {{ touched_quarters(ref('fct_spend_transactions'), 'transaction_date', loaded_after) }}
),

{% endif %}
spend as (
    select spend.* from {{ ref('fct_spend_transactions') }} as spend
    {% if is_incremental() %}
    inner join touched_quarters
        on spend.company_id = touched_quarters.company_id
            and spend.transaction_date >= touched_quarters.quarter_start_date
            and spend.transaction_date < touched_quarters.quarter_start_date + interval '3 months'
    {% endif %}
),

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
    select
        *,
        -- when this row was last (re)written: the build that wrote it
        now() as dbt_loaded_at
    from rolled_up
    {% if is_incremental() %}
    union all
    {{ partition_markers('touched_quarters', ['company_id', 'quarter_start_date']) }}
    {% endif %}
)

select * from final
