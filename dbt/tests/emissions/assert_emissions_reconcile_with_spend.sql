-- Reconciliation: for each company and quarter, the £ of the emissions models (mapped + unmapped
-- + out of scope, in rpt_emissions_coverage, and the lines of fct_spend_emissions) equals the £
-- and line count of fct_spend_transactions. Returns the quarters that disagree.
with

spend as (
    select
        company_id,
        to_char(date_trunc('quarter', transaction_date), 'YYYY-"Q"Q') as quarter,
        count(*) as line_count,
        sum(amount) as net_gbp
    from {{ ref('fct_spend_transactions') }}
    group by 1, 2
),

coverage as (
    select
        company_id,
        quarter,
        line_count,
        mapped_gbp + unmapped_gbp + out_of_scope_gbp as net_gbp
    from {{ ref('rpt_emissions_coverage') }}
),

emission_lines as (
    select
        company_id,
        quarter,
        count(*) as line_count,
        sum(net_gbp) as net_gbp
    from {{ ref('fct_spend_emissions') }}
    group by 1, 2
)

select
    coalesce(spend.company_id, coverage.company_id, emission_lines.company_id) as company_id,
    coalesce(spend.quarter, coverage.quarter, emission_lines.quarter) as quarter,
    spend.net_gbp as spend_gbp,
    coverage.net_gbp as coverage_gbp,
    emission_lines.net_gbp as emission_lines_gbp,
    spend.line_count as spend_lines,
    emission_lines.line_count as emission_lines
from spend
full outer join coverage
    on spend.company_id = coverage.company_id
        and spend.quarter = coverage.quarter
full outer join emission_lines
    on coalesce(spend.company_id, coverage.company_id) = emission_lines.company_id
        and coalesce(spend.quarter, coverage.quarter) = emission_lines.quarter
where spend.net_gbp is distinct from coverage.net_gbp
    or spend.net_gbp is distinct from emission_lines.net_gbp
    or spend.line_count is distinct from coverage.line_count
    or spend.line_count is distinct from emission_lines.line_count
