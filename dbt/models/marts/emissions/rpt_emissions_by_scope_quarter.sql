-- kg CO2e per company, calendar quarter, GHG Protocol scope and Scope 3 category (the line's
-- ghg_scope and scope3_category, seed emission_scope_categories), as the GHG Protocol asks
-- emissions to be reported: with the £ behind each figure by method (how the kg was estimated)
-- and the quarter's excluded £ (out of scope + unmapped) against the exclusion cap of the GHG
-- Protocol's 2026 draft revision (5 %). Out-of-scope lines have no scope: one row per quarter
-- with ghg_scope null holds their £. upstream_only_kgco2e is the part of the kg that misses the
-- buyer's own combustion (fuel, gas, heating oil): never read that part as complete.
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_emissions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{ quarterly_rollup_config('emissions_by_scope_quarter_id') }}

with

{{ rollup_input('emissions', ref('fct_spend_emissions'), quarter_column='quarter_start_date') }},

aggregated as (
    select
        company_id,
        company_name,
        bool_and(is_company_data_complete) as is_company_data_complete,
        quarter,
        quarter_start_date,
        ghg_scope,
        scope3_category,
        scope3_category_name,
        factor_set,
        count(*) as line_count,
        sum(net_gbp) as net_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'mapped'), 0) as mapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'unmapped'), 0) as unmapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'out_of_scope'), 0) as out_of_scope_gbp,
        coalesce(sum(net_gbp) filter (where method = 'spend_based'), 0) as spend_based_gbp,
        coalesce(sum(net_gbp) filter (where method = 'activity_based'), 0) as activity_based_gbp,
        coalesce(sum(net_gbp) filter (where method = 'supplier_specific'), 0) as supplier_specific_gbp,
        coalesce(sum(kgco2e), 0) as kgco2e,
        coalesce(sum(kgco2e) filter (where is_upstream_only), 0) as upstream_only_kgco2e
    from emissions
    group by
        company_id, company_name, quarter, quarter_start_date, ghg_scope, scope3_category,
        scope3_category_name, factor_set
),

quartered as (
    select
        *,
        mapped_gbp + unmapped_gbp as in_scope_gbp,
        unmapped_gbp + out_of_scope_gbp as excluded_gbp,
        sum(net_gbp) over quarter_window as quarter_net_gbp,
        sum(unmapped_gbp + out_of_scope_gbp) over quarter_window as quarter_excluded_gbp,
        sum(kgco2e) over quarter_window as quarter_kgco2e
    from aggregated
    window quarter_window as (partition by company_id, quarter_start_date, factor_set)
),

rolled_up as (
    select
        {{ surrogate_key(['company_id', 'quarter', 'ghg_scope', 'scope3_category', 'factor_set']) }}
            as emissions_by_scope_quarter_id,
        company_id,
        company_name,
        is_company_data_complete,
        quarter,
        quarter_start_date,
        ghg_scope,
        scope3_category,
        scope3_category_name,
        factor_set,
        line_count,
        net_gbp,
        mapped_gbp,
        unmapped_gbp,
        out_of_scope_gbp,
        in_scope_gbp,
        spend_based_gbp,
        activity_based_gbp,
        supplier_specific_gbp,
        -- shares of the row's in-scope £ by method (the rest is unmapped: no kg, no method);
        -- null when it nets to zero (an out-of-scope row)
        round(spend_based_gbp / nullif(in_scope_gbp, 0), 4) as spend_based_share,
        round(activity_based_gbp / nullif(in_scope_gbp, 0), 4) as activity_based_share,
        round(supplier_specific_gbp / nullif(in_scope_gbp, 0), 4) as supplier_specific_share,
        kgco2e,
        upstream_only_kgco2e,
        round(kgco2e / nullif(quarter_kgco2e, 0), 4) as share_of_quarter_kgco2e,
        excluded_gbp,
        quarter_net_gbp,
        quarter_excluded_gbp,
        round(quarter_excluded_gbp / nullif(quarter_net_gbp, 0), 4) as quarter_excluded_share,
        -- the GHG Protocol's 2026 draft revision caps what an inventory may leave out at 5 %
        0.05 as exclusion_cap_share,
        round(quarter_excluded_gbp / nullif(quarter_net_gbp, 0), 4) <= 0.05 as is_within_exclusion_cap
    from quartered
),

final as (
    {{ rollup_final('rolled_up') }}
)

select * from final
