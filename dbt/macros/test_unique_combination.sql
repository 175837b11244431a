{#
    Primary-key test for compound keys: no two rows share the combination and no part is null.
    Usage:  data_tests: [{unique_combination: {arguments: {columns: [company_id, record_id]}}}]
#}
{% test unique_combination(model, columns) %}

with

keyed as (
    select
        {{ columns | join(', ') }},
        count(*) as row_count
    from {{ model }}
    group by {{ columns | join(', ') }}
)

select *
from keyed
where row_count > 1
{%- for column in columns %}
    or {{ column }} is null
{%- endfor %}

{% endtest %}
