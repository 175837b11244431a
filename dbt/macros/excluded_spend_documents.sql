{#
    The exception marts: spend lines kept out of the fact (int_spend_lines_unioned) for one of
    `reasons`, one row per document with its amounts summed in the document's own currency, keyed
    by `id_column`. Materialised as views by the callers: always what the line layer holds now.
#}
{% macro excluded_spend_documents(reasons, id_column) -%}
with

spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
    where exclusion_reason in ({% for reason in reasons %}'{{ reason }}'{% if not loop.last %}, {% endif %}{% endfor %})
),

documents as (
    select
        company_id,
        stream,
        record_id,
        transaction_type,
        document_number,
        transaction_date,
        document_status,
        currency,
        base_currency,
        exclusion_reason as reason,
        count(*) as line_count,
        sum(net_amount) as amount,
        sum(tax_amount) as vat_amount,
        sum(total_amount) as gross_amount
    from spend_lines
    group by
        company_id, stream, record_id, transaction_type, document_number, transaction_date,
        document_status, currency, base_currency, exclusion_reason
),

final as (
    select
        {{ surrogate_key(['company_id', 'stream', 'record_id']) }} as {{ id_column }},
        *
    from documents
)

select * from final
{%- endmacro %}
