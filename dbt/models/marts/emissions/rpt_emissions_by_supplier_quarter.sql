-- kg CO2e per company, calendar quarter and supplier (supplier_key as in rpt_spend_by_supplier_quarter:
-- the contact, else the name on the document, else 'unknown').
--
-- A table, kept incrementally by company-quarter (strategy replace_partitions): a build
-- recomputes the quarters fct_spend_emissions rewrote rows in since its last build, the quarters a
-- changed document left (int_spend_document_quarters) and every quarter of a company whose own
-- attributes changed (macro touched_quarters); a quarter left with no line is emptied.
{{ quarterly_rollup_config('emissions_by_supplier_quarter_id') }}

with

{{ rollup_input('emissions', ref('fct_spend_emissions'), quarter_column='quarter_start_date') }},

keyed as (
    select
        *,
        {{ supplier_key() }} as supplier_key
    from emissions
),

aggregated as (
    select
        company_id,
        company_name,
        bool_and(is_company_data_complete) as is_company_data_complete,
        quarter,
        quarter_start_date,
        supplier_key,
        max(supplier_id) as supplier_id,
        coalesce(max(supplier_name), 'unknown supplier') as supplier_name,
        factor_set,
        count(*) as line_count,
        sum(net_gbp) as net_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'mapped'), 0) as mapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'unmapped'), 0) as unmapped_gbp,
        coalesce(sum(net_gbp) filter (where emission_status = 'out_of_scope'), 0) as out_of_scope_gbp,
        coalesce(sum(kgco2e), 0) as kgco2e,
        coalesce(sum(kgco2e) filter (where is_upstream_only), 0) as upstream_only_kgco2e
    from keyed
    group by company_id, company_name, quarter, quarter_start_date, supplier_key, factor_set
),

rolled_up as (
    select
        {{ surrogate_key(['company_id', 'quarter', 'supplier_key', 'factor_set']) }}
            as emissions_by_supplier_quarter_id,
        *
    from aggregated
),

final as (
    {{ rollup_final('rolled_up') }}
)

select * from final
