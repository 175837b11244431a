-- How much of each company's quarterly spend has an emission factor: the £ mapped, unmapped and
-- out of scope (they add up to the quarter's net spend in fct_spend_transactions), and the share
-- of in-scope spend that is mapped. Read kgco2e together with coverage_share: a quarter at 60%
-- coverage is an estimate of 60% of what the company bought.
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_emissions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'quarter_start_date'],
        marker_column='emissions_coverage_id',
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
    {{ touched_quarters(ref('fct_spend_emissions'), 'transaction_date', loaded_after) }}
),

{% endif %}
emissions as (
    select emissions.* from {{ ref('fct_spend_emissions') }} as emissions
    {% if is_incremental() %}
    inner join touched_quarters
        on emissions.company_id = touched_quarters.company_id
            and emissions.quarter_start_date = touched_quarters.quarter_start_date
    {% endif %}
),

aggregated as (
    select
        company_id,
        company_name,
        bool_and(is_company_data_complete) as is_company_data_complete,
        quarter,
        quarter_start_date,
        factor_set,
        count(*) as line_count,
        count(*) filter (where emission_status = 'unmapped') as unmapped_line_count,
        sum(net_gbp) as net_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'mapped'), 0) as mapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'unmapped'), 0) as unmapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'out_of_scope'), 0) as out_of_scope_gbp,
        coalesce(sum(net_gbp) filter (where mapping_confidence = 'low'), 0) as low_confidence_gbp,
        coalesce(sum(net_gbp) filter (where is_deflated_or_flagged), 0) as flagged_price_gbp,
        coalesce(sum(kgco2e), 0) as kgco2e,
        coalesce(sum(kgco2e) filter (where is_upstream_only), 0) as upstream_only_kgco2e
    from (
        select
            *,
            price_adjustment in ('cpi_latest_month', 'cpi_earliest_year') as is_deflated_or_flagged
        from emissions
    ) as flagged
    group by company_id, company_name, quarter, quarter_start_date, factor_set
),

rolled_up as (
    select
        {{ surrogate_key(['company_id', 'quarter', 'factor_set']) }} as emissions_coverage_id,
        *,
        mapped_gbp + unmapped_gbp as in_scope_gbp,
        -- share of in-scope spend (mapped + unmapped) that has a factor; null when it nets to zero
        round(mapped_gbp / nullif(mapped_gbp + unmapped_gbp, 0), 4) as coverage_share
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
