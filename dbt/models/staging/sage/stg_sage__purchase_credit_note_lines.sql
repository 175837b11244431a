-- Lines (credit_note_lines) of the latest version of each purchase credit note.
{{ sage_document_lines('purchase_credit_notes') }}
