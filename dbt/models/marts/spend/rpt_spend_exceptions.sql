-- Spend documents kept out of the fact because they are void or draft: one row per document.
-- A view: always what the line layer holds now.
{{ excluded_spend_documents(['void', 'draft'], 'spend_exception_id') }}
