{#
    No NaN or infinity in an amount column. PostgreSQL's numeric holds both, and one NaN turns
    every sum, share and kg CO2e it meets into NaN while every other test passes. The loader
    quarantines non-finite amounts and the staging casts read them as null (macro sage_amount),
    so this only fails if one of those guards is broken.
    Usage:  data_tests: [finite_amount]
#}
{% test finite_amount(model, column_name) %}

select {{ column_name }}
from {{ model }}
-- NaN sorts above every number in PostgreSQL, so it fails the upper bound.
where not ({{ column_name }} > cast('-Infinity' as numeric) and {{ column_name }} < cast('Infinity' as numeric))

{% endtest %}
