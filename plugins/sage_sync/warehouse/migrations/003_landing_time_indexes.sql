-- dbt's incremental models pick "what landed since my last build" by _extracted_at. Without an
-- index that is a scan of every version ever landed, so the daily build would cost the history,
-- not the day's changes. Idempotent like every migration.
do $$
declare
    stream text;
begin
    foreach stream in array array[
        'businesses', 'financial_settings', 'ledger_accounts', 'contacts', 'tax_rates',
        'purchase_invoices', 'purchase_credit_notes', 'purchase_quick_entries', 'other_payments',
        'deletions'
    ] loop
        execute format(
            'create index if not exists %1$I on sage_raw.%2$I (_extracted_at)',
            stream || '_landed', stream);
    end loop;
end
$$;
