{#
    The staging model of a purchase invoice or credit note (streams purchase_invoices and
    purchase_credit_notes): one row per record, its latest version typed, with its deletion. The
    two are one document type in Sage and share every column but these arguments:

    `default_transaction_type`: the type of a document whose payload names none.
    `after_due_date`: the stream's own typed columns, placed after due_date, as (expression, name)
    pairs (a credit note's original_invoice_date).

    The lines array (line_count) is the stream's line field in the registry (macro sage_streams).
#}
{% macro sage_purchase_document(stream_name, default_transaction_type, after_due_date=[]) -%}
{%- set stream = sage_streams() | selectattr('name', 'equalto', stream_name) | first -%}
{%- if not stream or not stream.line_field -%}
    {{ exceptions.raise_compiler_error("sage_purchase_document: stream " ~ stream_name ~ " has no line field") }}
{%- endif -%}
with

latest as (
    select * from {{ ref('base_sage__' ~ stream.name ~ '_latest') }}
),

deletions as (
    select * from {{ ref('base_sage__deletions') }}
    where stream = '{{ stream.name }}'
),

renamed as (
    select
        latest.company_id,
        latest.record_id,
        {{ sage_text('latest.payload', 'displayed_as') }} as document_number,
        coalesce({{ sage_link_id('latest.payload', 'transaction_type') }}, '{{ default_transaction_type }}') as transaction_type,
        {{ sage_link_id('latest.payload', 'contact') }} as contact_id,
        {{ sage_text('latest.payload', 'contact_name') }} as contact_name,
        {{ sage_text('latest.payload', 'contact_reference') }} as contact_reference,
        {{ sage_text('latest.payload', 'reference') }} as reference,
        {{ sage_text('latest.payload', 'vendor_reference') }} as vendor_reference,
        {{ sage_text('latest.payload', 'notes') }} as notes,
        {{ sage_date('latest.payload', 'date') }} as transaction_date,
        {{ sage_date('latest.payload', 'due_date') }} as due_date,
        {%- for expression, name in after_due_date %}
        {{ expression }} as {{ name }},
        {%- endfor %}
        {{ sage_amount('latest.payload', 'net_amount') }} as net_amount,
        {{ sage_amount('latest.payload', 'tax_amount') }} as tax_amount,
        {{ sage_amount('latest.payload', 'total_amount') }} as total_amount,
        {{ sage_amount('latest.payload', 'outstanding_amount') }} as outstanding_amount,
        {{ sage_amount('latest.payload', 'total_paid') }} as total_paid,
        {{ sage_link_id('latest.payload', 'currency') }} as currency,
        {{ sage_amount('latest.payload', 'exchange_rate') }} as exchange_rate,
        {{ sage_amount('latest.payload', 'base_currency_net_amount') }} as base_currency_net_amount,
        {{ sage_amount('latest.payload', 'base_currency_tax_amount') }} as base_currency_tax_amount,
        {{ sage_amount('latest.payload', 'base_currency_total_amount') }} as base_currency_total_amount,
        {{ sage_link_id('latest.payload', 'status') }} as document_status,
        {{ sage_text('latest.payload', 'void_reason') }} as void_reason,
        {{ sage_array_length('latest.payload', stream.line_field) }} as line_count,
        {{ sage_timestamp('latest.payload', 'created_at') }} as created_at,
        latest.source_updated_at as updated_at,
        {{ sage_deletion_columns() }},
        latest.version_count,
        latest.first_synced_at,
        latest._extracted_at as last_changed_at,
        latest.dbt_loaded_at,
        {{ sage_invalid_fields(stream.name, 'latest.payload') }} as invalid_fields
    from latest
    left join deletions
        on latest.company_id = deletions.company_id
            and latest.record_id = deletions.record_id
),

final as (
    select * from renamed
)

select * from final
{%- endmacro %}
