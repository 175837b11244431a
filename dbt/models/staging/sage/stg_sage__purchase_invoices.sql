-- The latest version of each purchase invoice, typed (macro sage_purchase_document).
{{ sage_purchase_document('purchase_invoices', 'PURCHASE_INVOICE') }}
