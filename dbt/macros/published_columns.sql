{#
    The columns an incremental strategy inserts, from dbt's `dest_columns`: every strategy builds
    its insert list through this macro, so that bookkeeping columns that a table fills by itself
    (a column default) can be left out in one place.
#}
{% macro published_columns(columns) %}{{ return(columns) }}{% endmacro %}
