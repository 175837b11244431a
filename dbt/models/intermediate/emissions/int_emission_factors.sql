-- The factors of the set in use, var('emission_factor_set'): the seed emission_factors__<set>,
-- one row per (sic_code, factor_year), with the set's metadata (seed emission_factor_sets).
-- Adding a set is a seed file and a row of emission_factor_sets, no code; selecting it is
-- `--vars '{emission_factor_set: <set>}'` (or the var in dbt_project.yml). Rows carry factor_set,
-- so builds with two sets (two targets) compare side by side.
with

factors as (
    select * from {{ ref('emission_factors__' ~ var('emission_factor_set')) }}
),

factor_sets as (
    select * from {{ ref('emission_factor_sets') }}
),

final as (
    select
        -- typed here, so a new set's seed needs no column_types to be exact (numeric, not float)
        cast(factors.factor_set as text) as factor_set,
        cast(factors.sic_code as text) as sic_code,
        cast(factors.category_name as text) as sic_category_name,
        cast(factors.year as integer) as factor_year,
        cast(factors.kgco2e_per_gbp as numeric) as kgco2e_per_gbp,
        factors.price_basis,
        factors.source,
        factor_sets.publication,
        factor_sets.licence,
        factor_sets.first_year,
        factor_sets.last_year
    from factors
    inner join factor_sets
        on factors.factor_set = factor_sets.factor_set
)

select * from final
