-- How much of each company's quarterly spend has an emission factor: the £ mapped, unmapped and
-- out of scope (they add up to the quarter's net spend in fct_spend_transactions), and the share
-- of in-scope spend that is mapped. Read kgco2e together with coverage_share: a quarter at 60%
-- coverage is an estimate of 60% of what the company bought.
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_emissions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{ quarterly_rollup_config('emissions_coverage_id') }}

with

{{ rollup_input('emissions', ref('fct_spend_emissions'), quarter_column='quarter_start_date') }},

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
    {{ rollup_final('rolled_up') }}
)

select * from final
