-- Lines (invoice_lines) of the latest version of each purchase invoice.
{{ sage_document_lines('purchase_invoices') }}
