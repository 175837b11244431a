{#
    Relationships test for compound keys (every key carries company_id): each non-null
    combination of `columns` in the model exists as `to_columns` in `to`.
#}
{% test relationships_combination(model, columns, to, to_columns) %}

with

children as (
    select distinct {{ columns | join(', ') }}
    from {{ model }}
    where {% for column in columns %}{{ column }} is not null{% if not loop.last %} and {% endif %}{% endfor %}
),

parents as (
    select distinct {{ to_columns | join(', ') }}
    from {{ to }}
)

select children.*
from children
left join parents
    on {% for column in columns -%}
        children.{{ column }} = parents.{{ to_columns[loop.index0] }}{% if not loop.last %} and {% endif %}
    {%- endfor %}
where parents.{{ to_columns[0] }} is null

{% endtest %}
