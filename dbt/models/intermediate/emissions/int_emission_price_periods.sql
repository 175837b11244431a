-- One row per factor set and calendar month (vars emission_price_months_from/_to: 2000-01 to
-- 2099-12): which year's factor a line of
-- that month takes, and the deflator that brings its £ to that year's prices.
--   * a year the set covers: its own factor, deflator 1 (the factors are in each year's prices);
--   * after the set's last year: the last year's factor, deflated with CPI D7BT:
--     index(last year, annual) / index(month), falling back to the spend year's annual index,
--     then to the latest month published (flagged 'cpi_latest_month');
--   * before the first year: the first year's factor, deflated the same way; the CPI seed starts
--     in 2015, so such lines take the earliest annual index (flagged 'cpi_earliest_year').
-- The deflator is rounded to 6 decimals, so kgco2e is the same to the decimal on every build.
with

factor_sets as (
    select * from {{ ref('emission_factor_sets') }}
),

cpi as (
    select * from {{ ref('uk_cpi_d7bt') }}
),

cpi_monthly as (
    select
        to_date(period, 'YYYY-MM') as month_start,
        index_2015_100
    from cpi
    where period_type = 'month'
),

cpi_annual as (
    select
        cast(period as integer) as year,
        index_2015_100
    from cpi
    where period_type = 'year'
),

latest_month as (
    select
        month_start,
        index_2015_100
    from cpi_monthly
    order by month_start desc
    limit 1
),

earliest_year as (
    select
        year,
        index_2015_100
    from cpi_annual
    order by year
    limit 1
),

months as (
    select cast(month_start as date) as spend_month
    from generate_series(
            date '{{ var("emission_price_months_from", "2000-01-01") }}',
            date '{{ var("emission_price_months_to", "2099-12-01") }}',
            interval '1 month'
        ) as month_start
),

periods as (
    select
        factor_sets.factor_set,
        months.spend_month,
        cast(extract(year from months.spend_month) as integer) as spend_year,
        factor_sets.first_year,
        factor_sets.last_year
    from factor_sets
    cross join months
),

indexed as (
    select
        periods.*,
        case
            when periods.spend_year < periods.first_year then periods.first_year
            when periods.spend_year > periods.last_year then periods.last_year
            else periods.spend_year
        end as factor_year,
        periods.spend_year between periods.first_year and periods.last_year as is_in_factor_years,
        cpi_monthly.index_2015_100 as month_index,
        cpi_annual.index_2015_100 as year_index
    from periods
    left join cpi_monthly
        on periods.spend_month = cpi_monthly.month_start
    left join cpi_annual
        on periods.spend_year = cpi_annual.year
),

deflated as (
    select
        indexed.factor_set,
        indexed.spend_month,
        indexed.factor_year,
        not indexed.is_in_factor_years as is_deflated,
        indexed.spend_year < indexed.first_year as is_before_factor_years,
        case
            when indexed.is_in_factor_years then 'none'
            when indexed.month_index is not null then 'cpi_monthly'
            when indexed.year_index is not null then 'cpi_annual'
            when indexed.spend_year > indexed.last_year then 'cpi_latest_month'
            else 'cpi_earliest_year'
        end as price_adjustment,
        case
            when indexed.is_in_factor_years then null
            when indexed.month_index is not null then to_char(indexed.spend_month, 'YYYY-MM')
            when indexed.year_index is not null then cast(indexed.spend_year as text)
            when indexed.spend_year > indexed.last_year then to_char(latest_month.month_start, 'YYYY-MM')
            else cast(earliest_year.year as text)
        end as price_index_period,
        factor_year_index.index_2015_100 as factor_year_index,
        case
            when indexed.is_in_factor_years then null
            else coalesce(
                    indexed.month_index,
                    indexed.year_index,
                    case when indexed.spend_year > indexed.last_year then latest_month.index_2015_100
                        else earliest_year.index_2015_100
                    end
                )
        end as spend_index
    from indexed
    cross join latest_month
    cross join earliest_year
    left join cpi_annual as factor_year_index
        on indexed.factor_year = factor_year_index.year
),

final as (
    select
        factor_set,
        spend_month,
        factor_year,
        is_deflated,
        is_before_factor_years,
        price_adjustment,
        price_index_period,
        spend_index,
        factor_year_index,
        case
            when not is_deflated then cast(1 as numeric)
            else round(cast(factor_year_index as numeric) / cast(spend_index as numeric), 6)
        end as deflator
    from deflated
)

select * from final
