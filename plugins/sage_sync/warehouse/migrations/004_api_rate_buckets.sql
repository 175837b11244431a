-- The deployment-wide Sage request budget (sage_sync.ratelimit): one token bucket per row, shared by
-- every worker process. Created here so the sync's role needs no CREATE right at run time (the limiter
-- creates it only in a database that was never migrated). Idempotent like every migration; the row
-- itself is written by the limiter (rate and capacity from its settings, the balance kept).
create table if not exists sage_control.api_rate_buckets (
    name        text primary key,
    tokens      double precision not null,
    capacity    double precision not null,
    rate        double precision not null,   -- tokens per second
    refilled_at timestamptz not null default clock_timestamp()
);
