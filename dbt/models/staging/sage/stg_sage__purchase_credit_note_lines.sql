-- Lines of the latest version of each document: lines have no ids of their own in Sage's change
-- feed, so a new document version replaces all of its lines.
with

latest as (
    select * from {{ ref('base_sage__purchase_credit_notes_latest') }}
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
        case when jsonb_typeof(latest.payload -> 'credit_note_lines') = 'array'
            then latest.payload -> 'credit_note_lines' else '[]'::jsonb end
    ) with ordinality as line (value, ordinality)
),

renamed as (
    select
        company_id,
        record_id,
        coalesce({{ sage_text('line', 'id') }}, record_id || ':' || line_number) as line_id,
        cast(line_number as integer) as line_number,
        {{ sage_text('line', 'description') }} as description,
        {{ sage_link_id('line', 'ledger_account') }} as ledger_account_id,
        {{ sage_amount('line', 'quantity') }} as quantity,
        {{ sage_amount('line', 'unit_price') }} as unit_price,
        {{ sage_amount('line', 'net_amount') }} as net_amount,
        {{ sage_link_id('line', 'tax_rate') }} as tax_rate_id,
        {{ sage_amount('line', 'tax_amount') }} as tax_amount,
        {{ sage_amount('line', 'total_amount') }} as total_amount,
        {{ sage_amount('line', 'base_currency_net_amount') }} as base_currency_net_amount,
        {{ sage_amount('line', 'base_currency_tax_amount') }} as base_currency_tax_amount,
        {{ sage_amount('line', 'base_currency_total_amount') }} as base_currency_total_amount,
        dbt_loaded_at
    from lines
),

final as (
    select * from renamed
)

select * from final
