-- The latest version of each purchase credit note, typed (macro sage_purchase_document): an
-- invoice's columns plus the date of the invoice it credits.
{{ sage_purchase_document('purchase_credit_notes', 'PURCHASE_CREDIT_NOTE', after_due_date=[
    (sage_date('latest.payload', 'original_invoice_date'), 'original_invoice_date'),
]) }}
