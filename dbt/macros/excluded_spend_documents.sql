{#
    The exception marts: spend lines kept out of the fact (int_spend_lines_unioned) for one of
    `reasons`, one row per document with its amounts summed in the document's own currency, keyed
    by `id_column`. Tables kept incrementally by document (strategy replace_partitions, marker
    column `id_column`): a build rewrites the documents changed since its last build and every
    document of a company whose own attributes changed (a base currency re-classifies them all).
    The callers declare the refs read only by incremental runs (depends_on comments).
#}
{% macro excluded_spend_documents(reasons, id_column) -%}
{%- set loaded_after = mart_watermark() %}

with

{% if is_incremental() %}
changed_members as (
    {{ changed_dimension_members(['company'], loaded_after) }}
),

touched_documents as (
    {{ changed_spend_documents(loaded_after) }}
    union
    {{ documents_of_changed_members('changed_members', {'company': none}) }}
),

{% endif %}
spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
    where exclusion_reason in ({% for reason in reasons %}'{{ reason }}'{% if not loop.last %}, {% endif %}{% endfor %})
    {% if is_incremental() %}
        and (company_id, stream, record_id) in (
            select company_id, stream, record_id from touched_documents
        )
    {% endif %}
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

listed as (
    select
        {{ surrogate_key(['company_id', 'stream', 'record_id']) }} as {{ id_column }},
        *,
        -- when this row was last (re)written: the build that wrote it
        now() as dbt_loaded_at
    from documents
),

final as (
    select * from listed
    {% if is_incremental() %}
    union all
    {{ partition_markers('touched_documents', ['company_id', 'stream', 'record_id']) }}
    {% endif %}
)

select * from final
{%- endmacro %}
