-- The factor set in use (int_emission_factors) must exist and have a factor for every SIC
-- group and year the spend needs: a mapped line without a factor would silently count as nothing.
-- Also every group a rule or default can map to must be in the set. Returns what is missing.
with

factors as (
    select * from {{ ref('int_emission_factors') }}
),

-- One row, always: the set in use, and whether emission_factor_sets lists it.
factor_set_in_use as (
    select
        min(factor_set) as factor_set,
        coalesce(bool_and(is_known_set), false) as is_known_set
    from factors
),

known_groups as (
    select distinct sic_code
    from factors
),

missing_set as (
    select
        factor_set,
        cast(null as text) as sic_code,
        cast(null as integer) as factor_year,
        cast(null as bigint) as line_count,
        'factor set is not in emission_factor_sets' as problem
    from factor_set_in_use
    where not is_known_set
),

-- Read against the set in use, not the stored kgco2e: a mart table may still hold the rows of an
-- earlier build (a build refused here publishes nothing, and the next one rewrites them).
missing_years as (
    select
        factor_set_in_use.factor_set,
        emissions.sic_code,
        emissions.factor_year,
        count(*) as line_count,
        'no factor for this group and year: the set does not cover the spend' as problem
    from {{ ref('fct_spend_emissions') }} as emissions
    cross join factor_set_in_use
    where emissions.emission_status = 'mapped'
        and not exists (
            select 1 from factors
            where factors.sic_code = emissions.sic_code
                and factors.factor_year = emissions.factor_year
        )
    group by factor_set_in_use.factor_set, emissions.sic_code, emissions.factor_year
),

rule_groups as (
    select sic_code from {{ ref('emission_chart_defaults') }}
    where sic_code is not null
    union
    select sic_code from {{ ref('emission_keyword_rules') }}
    where sic_code is not null
),

missing_groups as (
    select
        factor_set_in_use.factor_set,
        rule_groups.sic_code,
        cast(null as integer),
        cast(null as bigint),
        'a default or keyword rule maps to a group the set does not have'
    from rule_groups
    cross join factor_set_in_use
    where not exists (
            select 1 from known_groups
            where known_groups.sic_code = rule_groups.sic_code
        )
)

select * from missing_set
union all
select * from missing_years
union all
select * from missing_groups
