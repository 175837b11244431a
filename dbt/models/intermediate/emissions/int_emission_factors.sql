-- The factors of the set in use, var('emission_factor_set'): the seed emission_factors__<set>,
-- one row per (sic_code, factor_year), with the set's metadata (seed emission_factor_sets).
-- Adding a set is a seed file and a row of emission_factor_sets, no code; selecting it is
-- `--vars '{emission_factor_set: <set>}'` (or the var in dbt_project.yml). Rows carry factor_set,
-- so builds with two sets (two targets) compare side by side.
--
-- The one model that reads the var: everything else takes the set in use from these rows
-- (fct_spend_emissions, the emissions tests), and so do its licence and attribution (the
-- emissions report prints them). A set missing from emission_factor_sets keeps its factors here
-- with is_known_set false, which the test assert_factor_set_covers_spend reports; a set not
-- approved (is_approved false) fails assert_factor_set_is_approved, so it never makes the
-- published figures.
{%- set factor_set = var('emission_factor_set') %}

with

factors as (
    select * from {{ ref('emission_factors__' ~ factor_set) }}
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
        factor_sets.last_year,
        factor_sets.publisher,
        factor_sets.attribution,
        factor_sets.release_date,
        factor_sets.gwp_basis,
        factor_sets.factors_sha256,
        coalesce(factor_sets.approved, false) as is_approved,
        factor_sets.factor_set is not null as is_known_set
    from factors
    left join factor_sets
        on factors.factor_set = factor_sets.factor_set
    where factors.factor_set = '{{ factor_set }}'
)

select * from final
