-- One row per spend line of int_spend_lines_signed: the first keyword rule (seed
-- emission_keyword_rules, by priority) that its description, and the supplier name on its
-- document, contain. fct_spend_emissions uses them to refine lines of mixed or unmapped accounts
-- (MAPPING.md §4: travel split into rail, air, hotels; office costs into phone, post, stationery).
--
-- Incremental like int_spend_lines_signed, by document (strategy replace_documents): a run matches
-- only the lines of documents rewritten since this table's last build, and a changed document with
-- no spend line left (deleted, voided into nothing, now a receipt) yields a marker row so its old
-- rows are removed. Texts are matched once per distinct text of the batch. Every row carries the
-- fingerprint of the rule set it was matched with: when the rules change, the next build re-matches
-- every line (history re-mapped), otherwise it costs what changed.
{{
    config(
        materialized='incremental',
        incremental_strategy='replace_documents',
        unique_key=['company_id', 'stream', 'record_id'],
        indexes=[
            {'columns': ['company_id', 'stream', 'record_id']},
            {'columns': ['dbt_loaded_at']},
        ],
    )
}}

-- The header models are read only by incremental runs: declared here, so dbt always knows them.
-- depends_on: {{ ref('stg_sage__purchase_invoices') }}
-- depends_on: {{ ref('stg_sage__purchase_credit_notes') }}
-- depends_on: {{ ref('stg_sage__purchase_quick_entries') }}
-- depends_on: {{ ref('stg_sage__other_payments') }}
{%- set fingerprint = emission_keyword_rules_fingerprint() %}
{%- set rematch_all = stored_emission_keyword_rules_fingerprint() != fingerprint %}
{%- set batch_only = is_incremental() and not rematch_all %}
{%- set loaded_after = incremental_watermark('dbt_loaded_at') if batch_only else none %}

with

spend_lines as (
    select
        company_id,
        stream,
        record_id,
        line_id,
        description,
        contact_name,
        dbt_loaded_at
    from {{ ref('int_spend_lines_signed') }}
    {% if batch_only %}where dbt_loaded_at > {{ loaded_after }}{% endif %}
),

{% if batch_only %}
-- Documents changed since the last build that may have no line left: markers (line_id null).
changed_documents as (
    {%- for stream in ['purchase_invoices', 'purchase_credit_notes', 'purchase_quick_entries', 'other_payments'] %}
    select company_id, '{{ stream }}' as stream, record_id, dbt_loaded_at
    from {{ ref('stg_sage__' ~ stream) }}
    where dbt_loaded_at > {{ loaded_after }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
),

{% endif %}
keyword_rules as (
    select * from {{ ref('emission_keyword_rules') }}
),

texts as (
    select description as text_value from spend_lines
    where description is not null
    union
    select contact_name from spend_lines
    where contact_name is not null
),

matched_texts as (
    select distinct on (texts.text_value)
        texts.text_value,
        keyword_rules.keyword_rule_id
    from texts
    inner join keyword_rules
        on {{ emission_keyword_matches('texts.text_value', 'keyword_rules.pattern') }}
    order by texts.text_value, keyword_rules.priority, keyword_rules.keyword_rule_id
),

lines as (
    select
        spend_lines.company_id,
        spend_lines.stream,
        spend_lines.record_id,
        spend_lines.line_id,
        description_matches.keyword_rule_id as description_keyword_rule_id,
        supplier_matches.keyword_rule_id as supplier_keyword_rule_id,
        spend_lines.dbt_loaded_at
    from spend_lines
    left join matched_texts as description_matches
        on spend_lines.description = description_matches.text_value
    left join matched_texts as supplier_matches
        on spend_lines.contact_name = supplier_matches.text_value
    {% if batch_only %}
    union all
    select
        company_id,
        stream,
        record_id,
        cast(null as text),
        cast(null as text),
        cast(null as text),
        dbt_loaded_at
    from changed_documents
    {% endif %}
),

final as (
    select
        company_id,
        stream,
        record_id,
        line_id,
        description_keyword_rule_id,
        supplier_keyword_rule_id,
        '{{ fingerprint }}' as keyword_rules_fingerprint,
        dbt_loaded_at
    from lines
)

select * from final
