-- A factor set that is not approved (seed emission_factor_sets) never makes reported figures:
-- building with it fails here, and a build with a failed test publishes nothing, so analysts keep
-- the last approved build's marts (macros/publish). Returns the set in use when it is not approved.
with

factors as (
    select * from {{ ref('int_emission_factors') }}
),

factor_set_in_use as (
    select
        min(factor_set) as factor_set,
        coalesce(bool_and(is_approved), false) as is_approved
    from factors
)

select
    factor_set,
    'factor set is not approved for reported figures (emission_factor_sets.approved)' as problem
from factor_set_in_use
where not is_approved
