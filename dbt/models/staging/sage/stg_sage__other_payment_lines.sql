-- Lines (payment_lines) of the latest version of each other payment: no quantity, price or
-- base-currency amounts (other payments are in the base currency), and `details`, not `description`.
{{ sage_document_lines('other_payments', columns=[
    (sage_text('line', 'details'), 'details'),
    (sage_link_id('line', 'ledger_account'), 'ledger_account_id'),
    (sage_link_id('line', 'tax_rate'), 'tax_rate_id'),
    (sage_amount('line', 'net_amount'), 'net_amount'),
    (sage_amount('line', 'tax_amount'), 'tax_amount'),
    (sage_amount('line', 'total_amount'), 'total_amount'),
]) }}
