-- Nothing is dropped silently: every non-deleted spend line is either in the fact or counted in
-- exactly one exceptions model. Returns the companies where the counts disagree.
with

spend_lines as (
    select
        company_id,
        count(*) as line_count
    from {{ ref('int_spend_lines_unioned') }}
    group by company_id
),

reported as (
    select
        company_id,
        count(*) as line_count
    from {{ ref('fct_spend_transactions') }}
    group by company_id
    union all
    select
        company_id,
        sum(line_count)
    from {{ ref('rpt_spend_exceptions') }}
    group by company_id
    union all
    select
        company_id,
        sum(line_count)
    from {{ ref('rpt_currency_exceptions') }}
    group by company_id
),

reported_per_company as (
    select
        company_id,
        sum(line_count) as line_count
    from reported
    group by company_id
)

select
    coalesce(spend_lines.company_id, reported_per_company.company_id) as company_id,
    spend_lines.line_count as spend_line_count,
    reported_per_company.line_count as reported_line_count
from spend_lines
full outer join reported_per_company
    on spend_lines.company_id = reported_per_company.company_id
where spend_lines.line_count is distinct from reported_per_company.line_count
