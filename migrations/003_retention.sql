-- Bookkeeping of the retention job: which scheduled runs happened, how far each got,
-- and who may run right now. Lets a re-delivered or retried event resume instead of
-- pruning twice, and keeps every deleted row audited exactly once.

-- One row per run, keyed by what identifies it across deliveries
-- (schedule ARN + scheduled time, the classic event's id, or the request id).
CREATE TABLE IF NOT EXISTS retention_runs (
    run_key            text        PRIMARY KEY,
    trigger            text        NOT NULL,
    dry_run            boolean     NOT NULL DEFAULT false,
    status             text        NOT NULL
        CHECK (status IN ('running', 'stopped', 'failed', 'completed')),
    attempts           integer     NOT NULL DEFAULT 1,
    started_at         timestamptz NOT NULL DEFAULT now(),
    attempt_started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at        timestamptz,
    last_error         text
);

-- Progress per table of a run. rows_deleted/batches/partitions_dropped are updated in
-- the same transaction as the work, so they are exact after any crash; audited_* say
-- how much of that has been written to audit_logs (also in the audit's transaction),
-- so the unaudited remainder is always known and audited once.
CREATE TABLE IF NOT EXISTS retention_run_tables (
    run_key            text        NOT NULL REFERENCES retention_runs (run_key) ON DELETE CASCADE,
    table_name         text        NOT NULL,
    cutoff             timestamptz NOT NULL,
    rows_deleted       bigint      NOT NULL DEFAULT 0,
    batches            integer     NOT NULL DEFAULT 0,
    partitions_dropped text[]      NOT NULL DEFAULT '{}',
    partition_rows     bigint[]    NOT NULL DEFAULT '{}',  -- estimated, one per dropped partition
    completed          boolean     NOT NULL DEFAULT false,
    audited_rows       bigint      NOT NULL DEFAULT 0,
    audited_batches    integer     NOT NULL DEFAULT 0,
    audited_partitions integer     NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, table_name)
);

-- Mutual exclusion without session-level advisory locks (they pin RDS Proxy
-- connections): one row, a holder and an expiry. The holder renews it inside every
-- batch transaction, which also fences a holder that lost it; a crashed holder's
-- lease simply expires.
CREATE TABLE IF NOT EXISTS retention_lease (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    holder      text,
    run_key     text,
    acquired_at timestamptz,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO retention_lease (singleton) VALUES (true) ON CONFLICT DO NOTHING;
