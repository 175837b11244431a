{#
    The staging model of a document stream's lines: one row per element of the payload array
    named by the stream's line field (macro sage_streams, from the registry), read from the latest
    version of each document. Lines have no ids of their own in Sage's change feed, so a new
    document version replaces all of its lines.

    `columns`: the typed line columns after line_id and line_number, as (expression, name) pairs;
    the default is Sage's purchase document line (invoice and credit note lines share it).
#}
{% macro sage_document_lines(stream_name, columns=none) -%}
{%- set stream = sage_streams() | selectattr('name', 'equalto', stream_name) | first -%}
{%- if not stream or not stream.line_field -%}
    {{ exceptions.raise_compiler_error("sage_document_lines: stream " ~ stream_name ~ " has no line field") }}
{%- endif -%}
{%- set columns = columns or [
    (sage_text('line', 'description'), 'description'),
    (sage_link_id('line', 'ledger_account'), 'ledger_account_id'),
    (sage_amount('line', 'quantity'), 'quantity'),
    (sage_amount('line', 'unit_price'), 'unit_price'),
    (sage_amount('line', 'net_amount'), 'net_amount'),
    (sage_link_id('line', 'tax_rate'), 'tax_rate_id'),
    (sage_amount('line', 'tax_amount'), 'tax_amount'),
    (sage_amount('line', 'total_amount'), 'total_amount'),
    (sage_amount('line', 'base_currency_net_amount'), 'base_currency_net_amount'),
    (sage_amount('line', 'base_currency_tax_amount'), 'base_currency_tax_amount'),
    (sage_amount('line', 'base_currency_total_amount'), 'base_currency_total_amount'),
] -%}
with

latest as (
    select * from {{ ref('base_sage__' ~ stream.name ~ '_latest') }}
),

lines as (
    select
        latest.company_id,
        latest.record_id,
        latest.dbt_loaded_at,
        line.value as line,
        line.ordinality as line_number
    from latest
    cross join lateral jsonb_array_elements(
        case when jsonb_typeof(latest.payload -> '{{ stream.line_field }}') = 'array'
            then latest.payload -> '{{ stream.line_field }}' else '[]'::jsonb end
    ) with ordinality as line (value, ordinality)
),

renamed as (
    select
        company_id,
        record_id,
        coalesce({{ sage_text('line', 'id') }}, record_id || ':' || line_number) as line_id,
        cast(line_number as integer) as line_number,
        {%- for expression, name in columns %}
        {{ expression }} as {{ name }},
        {%- endfor %}
        dbt_loaded_at
    from lines
),

final as (
    select * from renamed
)

select * from final
{%- endmacro %}
