-- One row: when the dbt invocation that last built this table started. Every model of that
-- build read raw at or after this instant, so raw landed before it (by a sync run that had
-- ended) is in the models. The reconciliation test compares models and raw only for companies
-- with no sync landing at or after it: a sync still landing during a build is reconciled by the
-- next one, whose asset event it triggers.
{{ config(materialized='table') }}

select
    '{{ invocation_id }}' as invocation_id,
    cast('{{ run_started_at.isoformat() }}' as timestamptz) as build_started_at
