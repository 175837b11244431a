-- Emissions of every GBP spend line: one row per row of fct_spend_transactions (spend_line_id),
-- computed with the factor set in use (var('emission_factor_set'), read by int_emission_factors
-- alone), which every row names.
--
-- Mapping, first match wins (mapping_rule): a line override (seed emission_line_overrides), then
-- the account's mapping (int_emission_account_mappings: account override, ledger account type,
-- chart account name, account name keyword, chart nominal code); for a mixed or unmapped account a
-- keyword in the line's description, else in the supplier's name on the document, refines it.
-- emission_status: 'mapped' (has a SIC group: kgco2e computed), 'out_of_scope' (buys nothing:
-- payroll, tax, interest...; out_of_scope_reason says why) or 'unmapped' (in scope, no group).
-- Out-of-scope and unmapped lines keep their £ and have kgco2e null, never zero.
--
-- kgco2e = round(round(net_gbp * deflator, 2) * kgco2e_per_gbp, 3): spend of a year the set
-- covers takes that year's factor (deflator 1); later or earlier spend is deflated to the prices
-- of the set's nearest year with CPI D7BT (int_emission_price_periods). Signed like the spend:
-- credit notes and refunds reduce emissions. scope_coverage 'upstream_only' (fuel, gas, heating
-- oil): the buyer's own combustion is not in a spend factor; never sum those rows as complete.
--
-- GHG Protocol scope and Scope 3 category (seed emission_scope_categories, one row per mapping
-- with its reason), first match wins: the ledger account type (fixed assets: capital goods), the
-- keyword rule that mapped the line, the line's SIC group, the account's name and type, else the
-- default row (category 1); scope_mapping_id names the row. Out-of-scope lines have none.
-- method: how the kg was estimated ('spend_based' today; 'activity_based' and
-- 'supplier_specific' when quantities or suppliers' own figures come in); null without kg.
-- data_quality: 1 (best) to 5, PCAF-style (docs/EMISSIONS.md): a spend-based line scores 4 when
-- its SIC group is a high or medium confidence match, 5 when low; null without kg.
--
-- A table, kept incrementally by document like fct_spend_transactions (strategy
-- replace_partitions). A build recomputes the lines of the documents whose spend lines were
-- rewritten or removed since its last build, of the documents with a line on an account whose
-- emission mapping changed or with a changed line override (int_dimension_versions), and the
-- stored lines of a SIC group whose factor or flags changed or of a month whose price period
-- changed, and the stored lines an edited, added or removed row of emission_scope_categories
-- applied to or now matches; a changed keyword rule set or factor set recomputes every line. The
-- keyword matching itself is done once per line when it lands (int_emission_line_keywords).
{{
    config(
        incremental_strategy='replace_partitions',
        unique_key=['company_id', 'stream', 'record_id'],
        marker_column='line_id',
        indexes=[
            {'columns': ['company_id', 'stream', 'record_id']},
            {'columns': ['company_id', 'quarter_start_date']},
            {'columns': ['company_id', 'emission_status']},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

-- Read only by incremental runs: declared here, so dbt always knows them.
-- depends_on: {{ ref('int_dimension_versions') }}
-- depends_on: {{ ref('int_spend_lines_signed') }}
-- depends_on: {{ ref('stg_sage__purchase_invoices') }}
-- depends_on: {{ ref('stg_sage__purchase_credit_notes') }}
-- depends_on: {{ ref('stg_sage__purchase_quick_entries') }}
-- depends_on: {{ ref('stg_sage__other_payments') }}
{%- set loaded_after = mart_watermark() %}
{%- set global_changes = changed_global_members(loaded_after) %}
{%- set recompute_all = 'emission_keyword_rules' in global_changes or 'emission_factor_set' in global_changes %}
{%- set changed_sic_codes = [] %}
{%- for key in global_changes.get('emission_factor', []) %}
    {%- do changed_sic_codes.append(key.split('/')[0]) %}
{%- endfor %}
{%- do changed_sic_codes.extend(global_changes.get('emission_sic_group', [])) %}
{%- set changed_scope_mappings = global_changes.get('emission_scope_category', []) | unique | list %}
{%- set changed_months = [] %}
{%- for key in global_changes.get('emission_price_period', []) %}
    {%- do changed_months.append(key.split('/')[-1]) %}
{%- endfor %}

with

{% if is_incremental() %}
changed_members as (
    {{ changed_dimension_members(['company', 'emission_account_mapping', 'emission_line_override'], loaded_after) }}
),

touched_documents as (
    select
        company_id,
        stream,
        record_id
    from {{ ref('fct_spend_transactions') }}
    where dbt_loaded_at > {{ loaded_after }}
    union
    {{ changed_spend_documents(loaded_after) }}
    union
    {{ documents_of_changed_members('changed_members', {
        'emission_account_mapping': 'ledger_account_id',
        'emission_line_override': 'record_id',
    }) }}
    union
    -- a company whose lines may have left the spend fact (a base currency no longer GBP)
    select
        stored.company_id,
        stored.stream,
        stored.record_id
    from {{ this }} as stored
    inner join changed_members
        on changed_members.dimension = 'company'
            and stored.company_id = changed_members.company_id
    {% if recompute_all %}
    union
    select company_id, stream, record_id from {{ ref('fct_spend_transactions') }}
    union
    select company_id, stream, record_id from {{ this }}
    {% endif %}
    {% if changed_sic_codes %}
    union
    select company_id, stream, record_id from {{ this }}
    where sic_code in ({% for code in changed_sic_codes | unique %}'{{ code }}'{% if not loop.last %}, {% endif %}{% endfor %})
    {% endif %}
    {% if changed_scope_mappings %}
    union
    -- the lines an edited, added or removed scope mapping row applied to...
    select company_id, stream, record_id from {{ this }}
    where scope_mapping_id in ({% for id in changed_scope_mappings %}'{{ id }}'{% if not loop.last %}, {% endif %}{% endfor %})
    union
    -- ...and those it matches now (a line records only the row that won)
    select
        stored.company_id,
        stored.stream,
        stored.record_id
    from {{ this }} as stored
    inner join {{ ref('emission_scope_categories') }} as changed_rows
        on (changed_rows.match_on = 'ledger_account_type'
            and stored.ledger_account_type = changed_rows.ledger_account_type)
        or (changed_rows.match_on = 'keyword_rule' and stored.keyword_rule_id = changed_rows.keyword_rule_id)
        or (changed_rows.match_on = 'sic_group' and stored.sic_code = changed_rows.sic_code)
        or (changed_rows.match_on = 'account_name'
            and lower(trim(stored.nominal_code_name)) = lower(trim(changed_rows.account_name))
            and stored.ledger_account_type = changed_rows.ledger_account_type)
    where changed_rows.scope_mapping_id in ({% for id in changed_scope_mappings %}'{{ id }}'{% if not loop.last %}, {% endif %}{% endfor %})
    {% endif %}
    {% if changed_months %}
    union
    select company_id, stream, record_id from {{ this }}
    where to_char(transaction_date, 'YYYY-MM') in ({% for month in changed_months | unique %}'{{ month }}'{% if not loop.last %}, {% endif %}{% endfor %})
    {% endif %}
),

{% endif %}
spend as (
    select * from {{ ref('fct_spend_transactions') }}
    {% if is_incremental() %}
    where (company_id, stream, record_id) in (
            select company_id, stream, record_id from touched_documents
        )
    {% endif %}
),

account_mappings as (
    select * from {{ ref('int_emission_account_mappings') }}
),

line_keywords as (
    select * from {{ ref('int_emission_line_keywords') }}
),

keyword_rules as (
    select * from {{ ref('emission_keyword_rules') }}
),

line_overrides as (
    select * from {{ ref('emission_line_overrides') }}
),

factors as (
    select * from {{ ref('int_emission_factors') }}
),

-- One row, always: the set whose factors int_emission_factors holds.
factor_set_in_use as (
    select min(factor_set) as factor_set
    from factors
),

price_periods as (
    select * from {{ ref('int_emission_price_periods') }}
    where factor_set in (select factor_set_in_use.factor_set from factor_set_in_use)
),

sic_group_flags as (
    select * from {{ ref('emission_sic_group_flags') }}
),

scope_categories as (
    select * from {{ ref('emission_scope_categories') }}
),

candidates as (
    select
        spend.*,
        line_overrides.company_id is not null as has_line_override,
        line_overrides.sic_code as line_override_sic_code,
        line_overrides.out_of_scope_reason as line_override_reason,
        account_mappings.mapping_rule as account_mapping_rule,
        account_mappings.sic_code as account_sic_code,
        account_mappings.out_of_scope_reason as account_reason,
        account_mappings.mapping_confidence as account_confidence,
        account_mappings.keyword_rule_id as account_keyword_rule_id,
        coalesce(account_mappings.is_refinable, true) as is_refinable,
        description_rules.keyword_rule_id as description_rule_id,
        description_rules.sic_code as description_sic_code,
        description_rules.out_of_scope_reason as description_reason,
        description_rules.confidence as description_confidence,
        supplier_rules.keyword_rule_id as supplier_rule_id,
        supplier_rules.sic_code as supplier_sic_code,
        supplier_rules.out_of_scope_reason as supplier_reason,
        supplier_rules.confidence as supplier_confidence
    from spend
    left join line_overrides
        on spend.company_id = line_overrides.company_id
            and spend.record_id = line_overrides.record_id
            and spend.line_id = line_overrides.line_id
    left join account_mappings
        on spend.company_id = account_mappings.company_id
            and spend.ledger_account_id = account_mappings.ledger_account_id
    left join line_keywords
        on spend.company_id = line_keywords.company_id
            and spend.stream = line_keywords.stream
            and spend.record_id = line_keywords.record_id
            and spend.line_id = line_keywords.line_id
    left join keyword_rules as description_rules
        on line_keywords.description_keyword_rule_id = description_rules.keyword_rule_id
    left join keyword_rules as supplier_rules
        on line_keywords.supplier_keyword_rule_id = supplier_rules.keyword_rule_id
),

ruled as (
    select
        *,
        case
            when has_line_override then 'line_override'
            when is_refinable and description_rule_id is not null then 'line_description_keyword'
            when is_refinable and supplier_rule_id is not null then 'supplier_keyword'
            else coalesce(account_mapping_rule, 'unmapped')
        end as mapping_rule
    from candidates
),

mapped as (
    select
        ruled.*,
        case ruled.mapping_rule
            when 'line_override' then ruled.line_override_sic_code
            when 'line_description_keyword' then ruled.description_sic_code
            when 'supplier_keyword' then ruled.supplier_sic_code
            else ruled.account_sic_code
        end as sic_code,
        case ruled.mapping_rule
            when 'line_override' then ruled.line_override_reason
            when 'line_description_keyword' then ruled.description_reason
            when 'supplier_keyword' then ruled.supplier_reason
            else ruled.account_reason
        end as out_of_scope_reason,
        case ruled.mapping_rule
            when 'line_override' then 'high'
            when 'line_description_keyword' then ruled.description_confidence
            when 'supplier_keyword' then ruled.supplier_confidence
            else coalesce(ruled.account_confidence, 'none')
        end as mapping_confidence,
        case ruled.mapping_rule
            when 'line_description_keyword' then ruled.description_rule_id
            when 'supplier_keyword' then ruled.supplier_rule_id
            when 'account_name_keyword' then ruled.account_keyword_rule_id
        end as keyword_rule_id
    from ruled
),

lines as (
    select
        mapped.spend_line_id,
        mapped.company_id,
        mapped.company_name,
        mapped.is_company_data_complete,
        mapped.record_id,
        mapped.line_id,
        mapped.stream,
        mapped.transaction_type,
        mapped.transaction_date,
        to_char(date_trunc('quarter', mapped.transaction_date), 'YYYY-"Q"Q') as quarter,
        cast(date_trunc('quarter', mapped.transaction_date) as date) as quarter_start_date,
        mapped.supplier_id,
        mapped.supplier_name,
        mapped.ledger_account_id,
        mapped.nominal_code,
        mapped.nominal_code_name,
        mapped.ledger_account_type,
        mapped.category,
        mapped.transaction_description,
        mapped.amount as net_gbp,
        case
            when mapped.sic_code is not null then 'mapped'
            when mapped.out_of_scope_reason is not null then 'out_of_scope'
            else 'unmapped'
        end as emission_status,
        mapped.mapping_rule,
        mapped.mapping_confidence,
        mapped.keyword_rule_id,
        mapped.out_of_scope_reason,
        mapped.sic_code,
        factors.sic_category_name,
        factor_set_in_use.factor_set,
        case when mapped.sic_code is not null then price_periods.factor_year end as factor_year,
        factors.kgco2e_per_gbp,
        case when mapped.sic_code is not null then price_periods.deflator end as deflator,
        case when mapped.sic_code is not null then price_periods.price_adjustment end as price_adjustment,
        case when mapped.sic_code is not null then price_periods.price_index_period end as price_index_period,
        coalesce(mapped.sic_code is not null and price_periods.is_before_factor_years, false)
            as is_before_factor_years,
        case
            when mapped.sic_code is null then null
            else coalesce(sic_group_flags.scope_coverage, 'supply_chain')
        end as scope_coverage,
        coalesce(sic_group_flags.scope_coverage = 'upstream_only', false) as is_upstream_only,
        case
            when mapped.sic_code is not null then round(mapped.amount * price_periods.deflator, 2)
        end as net_gbp_at_factor_prices,
        round(round(mapped.amount * price_periods.deflator, 2) * factors.kgco2e_per_gbp, 3) as kgco2e
    from mapped
    cross join factor_set_in_use
    left join price_periods
        on cast(date_trunc('month', mapped.transaction_date) as date) = price_periods.spend_month
    left join factors
        on mapped.sic_code = factors.sic_code
            and price_periods.factor_year = factors.factor_year
    left join sic_group_flags
        on mapped.sic_code = sic_group_flags.sic_code
),

-- The scope mapping row of each line: first match wins; an out-of-scope line matches none.
scope_matches as (
    select
        lines.*,
        coalesce(
            by_type.scope_mapping_id,
            by_keyword.scope_mapping_id,
            by_sic_group.scope_mapping_id,
            by_account.scope_mapping_id,
            by_default.scope_mapping_id
        ) as scope_mapping_id
    from lines
    left join scope_categories as by_type
        on lines.emission_status <> 'out_of_scope'
            and by_type.match_on = 'ledger_account_type'
            and lines.ledger_account_type = by_type.ledger_account_type
    left join scope_categories as by_keyword
        on lines.emission_status <> 'out_of_scope'
            and by_keyword.match_on = 'keyword_rule'
            and lines.keyword_rule_id = by_keyword.keyword_rule_id
    left join scope_categories as by_sic_group
        on lines.emission_status <> 'out_of_scope'
            and by_sic_group.match_on = 'sic_group'
            and lines.sic_code = by_sic_group.sic_code
    left join scope_categories as by_account
        on lines.emission_status <> 'out_of_scope'
            and by_account.match_on = 'account_name'
            and lower(trim(lines.nominal_code_name)) = lower(trim(by_account.account_name))
            and lines.ledger_account_type = by_account.ledger_account_type
    left join scope_categories as by_default
        on lines.emission_status <> 'out_of_scope'
            and by_default.match_on = 'default'
),

scoped as (
    select
        scope_matches.*,
        scope_categories.ghg_scope,
        scope_categories.scope3_category,
        scope_categories.scope3_category_name,
        case when scope_matches.emission_status = 'mapped' then 'spend_based' end as method,
        case
            when scope_matches.emission_status <> 'mapped' then null
            when scope_matches.mapping_confidence in ('high', 'medium') then 4
            else 5
        end as data_quality,
        -- when this row was last (re)written: the build that wrote it
        now() as dbt_loaded_at
    from scope_matches
    left join scope_categories
        on scope_matches.scope_mapping_id = scope_categories.scope_mapping_id
),

final as (
    select * from scoped
    {% if is_incremental() %}
    union all
    {{ partition_markers('touched_documents', ['company_id', 'stream', 'record_id']) }}
    {% endif %}
)

select * from final
