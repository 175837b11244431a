{#- The supplier a spend line is grouped under, the same in the spend and emissions rollups: the
    contact, else the name written on the document, else 'unknown'. -#}
{% macro supplier_key(supplier_id='supplier_id', supplier_name='supplier_name') -%}
    case
        when {{ supplier_id }} is not null then 'contact:' || {{ supplier_id }}
        when {{ supplier_name }} is not null then 'name:' || lower({{ supplier_name }})
        else 'unknown'
    end
{%- endmacro %}
