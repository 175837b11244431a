-- kg CO2e per company, calendar quarter and spend category (the category of
-- fct_spend_transactions, so it lines up with the spend marts), with the £ behind it split into
-- mapped, unmapped and out of scope.
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_emissions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{ quarterly_rollup_config('emissions_by_category_quarter_id') }}

with

{{ rollup_input('emissions', ref('fct_spend_emissions'), quarter_column='quarter_start_date') }},

aggregated as (
    select
        company_id,
        company_name,
        bool_and(is_company_data_complete) as is_company_data_complete,
        quarter,
        quarter_start_date,
        category,
        factor_set,
        count(*) as line_count,
        sum(net_gbp) as net_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'mapped'), 0) as mapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'unmapped'), 0) as unmapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'out_of_scope'), 0) as out_of_scope_gbp,
        coalesce(sum(kgco2e), 0) as kgco2e,
        coalesce(sum(kgco2e) filter (where is_upstream_only), 0) as upstream_only_kgco2e,
        coalesce(sum(kgco2e) filter (where mapping_confidence = 'low'), 0) as low_confidence_kgco2e
    from emissions
    group by company_id, company_name, quarter, quarter_start_date, category, factor_set
),

rolled_up as (
    select
        {{ surrogate_key(['company_id', 'quarter', 'category', 'factor_set']) }}
            as emissions_by_category_quarter_id,
        *,
        -- share of the company's kg in the quarter; null when the quarter nets to zero
        kgco2e / nullif(sum(kgco2e) over (partition by company_id, quarter), 0) as share_of_quarter_kgco2e
    from aggregated
),

final as (
    {{ rollup_final('rolled_up') }}
)

select * from final
