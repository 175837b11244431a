-- An override (seed emission_account_overrides or emission_line_overrides) must name a SIC group
-- of the factor set in use (int_emission_factors), or be out of scope with a reason, not both.
-- Returns each bad override with what is wrong with it.
with

factors as (
    select * from {{ ref('int_emission_factors') }}
),

known_groups as (
    select distinct sic_code
    from factors
),

factor_set_in_use as (
    select min(factor_set) as factor_set
    from factors
),

overrides as (
    select
        'emission_account_overrides' as seed,
        company_id,
        coalesce(ledger_account_id, 'nominal_code ' || nominal_code) as overridden,
        sic_code,
        out_of_scope_reason
    from {{ ref('emission_account_overrides') }}
    union all
    select
        'emission_line_overrides',
        company_id,
        record_id || ' / ' || line_id,
        sic_code,
        out_of_scope_reason
    from {{ ref('emission_line_overrides') }}
)

select
    overrides.*,
    case
        when overrides.sic_code is not null and known_groups.sic_code is null
            then 'sic_code ' || overrides.sic_code || ' is not a group of factor set ' || factor_set_in_use.factor_set
        when overrides.sic_code is not null and overrides.out_of_scope_reason is not null
            then 'give a sic_code or an out_of_scope_reason, not both'
        when overrides.sic_code is null and overrides.out_of_scope_reason is null
            then 'give a sic_code or an out_of_scope_reason'
    end as problem
from overrides
cross join factor_set_in_use
left join known_groups
    on overrides.sic_code = known_groups.sic_code
where (overrides.sic_code is not null and known_groups.sic_code is null)
    or (overrides.sic_code is null) = (overrides.out_of_scope_reason is null)
