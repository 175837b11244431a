{#
    Generated from plugins/sage_sync/sage/streams.py by scripts/gen_dbt_streams.py: do not edit.
    The Sage streams the pipeline reads, with the facts the models need (kind, whether it is
    kept incrementally, has a deletion feed, is filtered by document date, is spend, and the
    payload array and staging model of its lines).
#}
{% macro sage_streams() -%}
    {{ return([
        {"name": "businesses", "kind": "singleton", "is_incremental": False, "has_deletions": False, "is_date_filtered": False, "is_spend": False, "line_field": None, "lines_model": None},
        {"name": "financial_settings", "kind": "singleton", "is_incremental": False, "has_deletions": False, "is_date_filtered": False, "is_spend": False, "line_field": None, "lines_model": None},
        {"name": "ledger_accounts", "kind": "reference", "is_incremental": False, "has_deletions": False, "is_date_filtered": False, "is_spend": False, "line_field": None, "lines_model": None},
        {"name": "contacts", "kind": "reference", "is_incremental": True, "has_deletions": True, "is_date_filtered": False, "is_spend": False, "line_field": None, "lines_model": None},
        {"name": "tax_rates", "kind": "reference", "is_incremental": False, "has_deletions": False, "is_date_filtered": False, "is_spend": False, "line_field": None, "lines_model": None},
        {"name": "purchase_invoices", "kind": "document", "is_incremental": True, "has_deletions": True, "is_date_filtered": True, "is_spend": True, "line_field": "invoice_lines", "lines_model": "stg_sage__purchase_invoice_lines"},
        {"name": "purchase_credit_notes", "kind": "document", "is_incremental": True, "has_deletions": True, "is_date_filtered": True, "is_spend": True, "line_field": "credit_note_lines", "lines_model": "stg_sage__purchase_credit_note_lines"},
        {"name": "purchase_quick_entries", "kind": "document", "is_incremental": True, "has_deletions": True, "is_date_filtered": True, "is_spend": True, "line_field": None, "lines_model": None},
        {"name": "other_payments", "kind": "document", "is_incremental": True, "has_deletions": True, "is_date_filtered": True, "is_spend": True, "line_field": "payment_lines", "lines_model": "stg_sage__other_payment_lines"}
    ]) }}
{%- endmacro %}
