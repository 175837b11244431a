{#
    Custom incremental strategy `replace_partitions`: the model's batch names whole partitions of
    the table (the `unique_key` columns: a document, a company-quarter) and holds every row each
    of them must have now. All rows of every partition in the batch are deleted, then the batch's
    rows are inserted, except its marker rows: a partition that must be left empty (a deleted
    document, a quarter whose lines all moved away) is named by one row whose `marker_column`
    (config, default `line_id`) is null, so its old rows go and nothing comes back.

    dbt's delete+insert deletes only what the new rows' keys name, so an emptied partition would
    keep its old rows. Plain DELETE and INSERT in the model's one transaction: a reader sees the
    partition as it was or as it is.
#}
{% macro get_incremental_replace_partitions_sql(arg_dict) -%}
    {%- set target = arg_dict["target_relation"] -%}
    {%- set batch = arg_dict["temp_relation"] -%}
    {%- set keys = arg_dict["unique_key"] -%}
    {%- set keys = [keys] if keys is string else keys -%}
    {%- set marker_column = config.get("marker_column", "line_id") -%}
    {%- set columns = published_columns(arg_dict["dest_columns"]) | map(attribute="quoted") | join(", ") -%}

    delete from {{ target }} as target
    using (select distinct {{ keys | join(", ") }} from {{ batch }}) as replaced
    where {% for key in keys -%}
        target.{{ key }} = replaced.{{ key }}{% if not loop.last %} and {% endif %}
    {%- endfor %};

    insert into {{ target }} ({{ columns }})
    select {{ columns }}
    from {{ batch }}
    where {{ marker_column }} is not null
{%- endmacro %}
