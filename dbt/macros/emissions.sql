{#
    Macros of the emissions models (models/intermediate/emissions, models/marts/emissions).
#}

{#
    True when `text_sql` contains the keyword rule's `pattern` (a PostgreSQL regular expression
    fragment, seed emission_keyword_rules) as whole words, case-insensitively, allowing a plural
    's'. Whole words, so 'bt' does not match 'debts' nor 'rent' 'rental'.
#}
{% macro emission_keyword_matches(text_sql, pattern_sql) -%}
    {{ text_sql }} ~* ('\m(' || {{ pattern_sql }} || ')s?\M')
{%- endmacro %}

{#
    The md5 of every keyword rule, as a literal: stored on each row of int_emission_line_keywords,
    so that a changed rule set re-matches the whole history on the next (incremental) build.
    A constant while parsing (nothing is queried then), and while the seed is not built yet:
    `dbt docs generate` (`make docs`) compiles every model, also in a target never built, and a
    build always loads the seed before this model, so no build ever sees that constant.
#}
{% macro emission_keyword_rules_fingerprint() -%}
    {%- if execute and model.resource_type != 'unit_test'
            and load_relation(ref('emission_keyword_rules')) is not none -%}
        {%- set query -%}
            select md5(coalesce(string_agg(
                concat_ws('|', keyword_rule_id, priority, pattern, sic_code, out_of_scope_reason,
                          confidence, is_mixed),
                '~' order by keyword_rule_id), '')) as fingerprint
            from {{ ref('emission_keyword_rules') }}
        {%- endset -%}
        {{ return(run_query(query).columns[0].values()[0]) }}
    {%- else -%}
        {{ return('unit_test') }}
    {%- endif -%}
{%- endmacro %}

{#
    The fingerprint stored in this incremental model's table (one value: a changed rule set
    rewrites every row), or none when the table is empty.
#}
{% macro stored_emission_keyword_rules_fingerprint() -%}
    {%- if execute and is_incremental() and model.resource_type != 'unit_test' -%}
        {%- set query -%}
            select keyword_rules_fingerprint from {{ this }} limit 1
        {%- endset -%}
        {%- set values = run_query(query).columns[0].values() -%}
        {{ return(values[0] if values | length > 0 else none) }}
    {%- else -%}
        {{ return('unit_test') }}
    {%- endif -%}
{%- endmacro %}

