{#
    Custom incremental strategy `replace_documents` for models at line grain keyed by document.

    dbt's delete+insert deletes only the keys present in the new batch, so a document whose new
    version has no spend lines any more (deleted, turned into a receipt, lines removed) would keep
    its old lines. Here the model emits, for every changed document, at least one row: its lines,
    or one marker row with `line_id` null. All rows of every document in the batch are deleted,
    then only real lines (`line_id is not null`) are inserted. Markers never reach the table.
    The insert list goes through published_columns (a mart's bookkeeping column takes its default).
#}
{% macro get_incremental_replace_documents_sql(arg_dict) -%}
    {%- set target = arg_dict["target_relation"] -%}
    {%- set batch = arg_dict["temp_relation"] -%}
    {%- set keys = arg_dict["unique_key"] -%}
    {%- set keys = [keys] if keys is string else keys -%}
    {%- set columns = published_columns(arg_dict["dest_columns"]) | map(attribute="quoted") | join(", ") -%}

    delete from {{ target }} as target
    using (select distinct {{ keys | join(", ") }} from {{ batch }}) as changed_documents
    where {% for key in keys -%}
        target.{{ key }} = changed_documents.{{ key }}{% if not loop.last %} and {% endif %}
    {%- endfor %};

    insert into {{ target }} ({{ columns }})
    select {{ columns }}
    from {{ batch }}
    where line_id is not null
{%- endmacro %}
