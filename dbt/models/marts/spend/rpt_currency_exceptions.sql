-- Spend kept out of the GBP-only fact because of its currency: one row per document, amounts in
-- the document's own currency. Nothing is converted, nothing is dropped silently.
-- A view: a company whose base currency changes is re-classified at once.
{{ excluded_spend_documents(
    ['document_currency_not_gbp', 'company_base_currency_not_gbp'], 'currency_exception_id'
) }}
