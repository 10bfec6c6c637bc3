-- metrics_flush() commits durably (issue 18): a counter never goes down after a crash.
--
-- Migrations 002 to 007 had metrics_flush() set synchronous_commit=off for its own
-- transaction: the flush was acknowledged (and the next scrape served its deltas)
-- before its WAL reached disk, so a crash of the server could take back a value a
-- scrape had already served, and Prometheus saw the counter go down (a reset, and a
-- spurious jump in rate()). Measured before this migration: flush, scrape, immediate
-- stop about 110 ms later, restart, scrape: the last flush lost in 5 of 5 trials.
--
-- Now the commit waits for its WAL flush (and turns it on should the session, role or
-- server have it off). What this costs per flush, and under concurrent flushes (row
-- locks on the totals are now held across the WAL flush; the others spill, as they do
-- for any collision), is measured in benchmarks/README.md (suite durability).
-- Unchanged otherwise: the body below is 007's.

CREATE OR REPLACE FUNCTION metrics_flush(
    p_container text, p_shard integer, p_seq bigint,
    p_counters json, p_gauges json, p_new_series boolean
) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_prev     bigint;
    v_expected bigint := 0;
    v_written  bigint := 0;
    v_more     bigint;
    v_more_written bigint;
    v_ids      integer[];
    v_values   float8[];
    v_ats      float8[];
BEGIN
    -- Acknowledged only once durable: a scrape may serve this flush as soon as it
    -- commits, so a crash must not take it back. Raised to `on` (PostgreSQL's default)
    -- when the session, role, database or server commits asynchronously; any other
    -- value already flushes the WAL locally before the commit returns.
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;

    -- Locks the container's cursor row: a late duplicate of this flush waits here,
    -- then sees the advanced cursor and skips what was already stored.
    INSERT INTO metric_flush_cursors AS c (container, seq, prev)
    VALUES (p_container, p_seq, 0)
    ON CONFLICT (container) DO UPDATE
        SET prev = c.seq, seq = greatest(c.seq, EXCLUDED.seq), seen_at = now()
    RETURNING prev INTO v_prev;

    IF p_new_series THEN
        -- Only series that do not exist (ON CONFLICT alone burns an identity value
        -- per row), looked up by index; sorted, so that concurrent flushes lock in
        -- one order.
        INSERT INTO metric_series (family, labels, part, kind)
        SELECT DISTINCT b.family, b.labels, b.part, b.kind
        FROM (
            SELECT seq, family, labels, part, 'c'::"char" AS kind
            FROM json_to_recordset(p_counters) AS r(seq bigint, family text, labels text, part text)
            UNION ALL
            SELECT seq, family, labels, part, 'g'::"char"
            FROM json_to_recordset(p_gauges) AS r(seq bigint, family text, labels text, part text)
        ) AS b
        LEFT JOIN LATERAL (
            SELECT 1 AS found FROM metric_series AS s
            WHERE s.family = b.family AND s.labels = b.labels AND s.part = b.part
            LIMIT 1) AS s ON true
        WHERE b.seq > v_prev AND s.found IS NULL
        ORDER BY 1, 2, 3
        ON CONFLICT (family, labels, part) DO NOTHING;
    END IF;

    -- Series are looked up one by one (LATERAL ... LIMIT 1 is an index probe; a join
    -- would be planned for json_to_recordset's guess of 100 rows: a scan of every
    -- series on every flush).
    IF p_counters IS NOT NULL AND p_shard = 0 THEN
        -- A container of shard 0 writes the totals themselves, waiting for their locks
        -- in series id order, as every flush did before this migration.
        WITH batch AS (
            SELECT family, labels, part, sum(value) AS value, max(at) AS at
            FROM json_to_recordset(p_counters)
                AS r(seq bigint, family text, labels text, part text, value float8, at float8)
            WHERE seq > v_prev
            GROUP BY family, labels, part
        ), written AS (
            INSERT INTO metric_values AS v (series_id, shard, value, updated_at)
            SELECT s.id, 0, b.value, to_timestamp(b.at)
            FROM batch AS b
            CROSS JOIN LATERAL (
                SELECT id FROM metric_series
                WHERE family = b.family AND labels = b.labels AND part = b.part AND kind = 'c'
                LIMIT 1) AS s
            ORDER BY s.id
            ON CONFLICT (series_id, shard) DO UPDATE
                SET value = v.value + EXCLUDED.value,
                    updated_at = greatest(v.updated_at, EXCLUDED.updated_at)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM written)
        INTO v_expected, v_written;
    ELSIF p_counters IS NOT NULL THEN
        IF p_new_series THEN  -- a series new to this container may be new to the store
            INSERT INTO metric_values (series_id, shard, value, updated_at)
            SELECT s.id, 0, 0, now()
            FROM json_to_recordset(p_counters)
                AS r(seq bigint, family text, labels text, part text)
            CROSS JOIN LATERAL (
                SELECT id FROM metric_series
                WHERE family = r.family AND labels = r.labels AND part = r.part AND kind = 'c'
                LIMIT 1) AS s
            WHERE r.seq > v_prev AND NOT EXISTS (
                SELECT 1 FROM metric_values AS v WHERE v.series_id = s.id AND v.shard = 0)
            GROUP BY s.id
            ORDER BY s.id
            ON CONFLICT (series_id, shard) DO NOTHING;
        END IF;
        -- The totals no other flush holds take their deltas at once; the rest come
        -- back as arrays for this container's shard (written in series id order).
        WITH batch AS (
            SELECT s.id, b.value, b.at
            FROM (
                SELECT family, labels, part, sum(value) AS value, max(at) AS at
                FROM json_to_recordset(p_counters)
                    AS r(seq bigint, family text, labels text, part text, value float8, at float8)
                WHERE seq > v_prev
                GROUP BY family, labels, part
            ) AS b
            LEFT JOIN LATERAL (
                SELECT id FROM metric_series
                WHERE family = b.family AND labels = b.labels AND part = b.part AND kind = 'c'
                LIMIT 1) AS s ON true
        ), free AS (
            SELECT v.series_id FROM metric_values AS v
            WHERE v.shard = 0 AND v.series_id IN (SELECT id FROM batch)
            ORDER BY v.series_id
            FOR UPDATE SKIP LOCKED
        ), totalled AS (
            UPDATE metric_values AS v
            SET value = v.value + b.value, updated_at = greatest(v.updated_at, to_timestamp(b.at))
            FROM batch AS b
            WHERE v.shard = 0 AND v.series_id = b.id AND v.series_id IN (SELECT series_id FROM free)
            RETURNING v.series_id
        )
        SELECT count(*), count(b.id),
               array_agg(b.id) FILTER (WHERE b.id IS NOT NULL AND t.series_id IS NULL),
               array_agg(b.value) FILTER (WHERE b.id IS NOT NULL AND t.series_id IS NULL),
               array_agg(b.at) FILTER (WHERE b.id IS NOT NULL AND t.series_id IS NULL)
        INTO v_expected, v_written, v_ids, v_values, v_ats
        FROM batch AS b LEFT JOIN totalled AS t ON t.series_id = b.id;

        IF v_ids IS NOT NULL THEN  -- held by another flush: this container's shard
            INSERT INTO metric_values AS v (series_id, shard, value, updated_at)
            SELECT u.id, p_shard, u.value, to_timestamp(u.at)
            FROM unnest(v_ids, v_values, v_ats) AS u(id, value, at)
            ORDER BY u.id
            ON CONFLICT (series_id, shard) DO UPDATE
                SET value = v.value + EXCLUDED.value,
                    updated_at = greatest(v.updated_at, EXCLUDED.updated_at);
        END IF;
    END IF;

    IF p_gauges IS NOT NULL THEN  -- the newest reading wins, whichever container sent it
        WITH batch AS (
            SELECT DISTINCT ON (family, labels, part) family, labels, part, value, at
            FROM json_to_recordset(p_gauges)
                AS r(seq bigint, family text, labels text, part text, value float8, at float8)
            WHERE seq > v_prev
            ORDER BY family, labels, part, at DESC
        ), written AS (
            INSERT INTO metric_values AS v (series_id, shard, value, updated_at)
            SELECT s.id, p_shard, b.value, to_timestamp(b.at)
            FROM batch AS b
            CROSS JOIN LATERAL (
                SELECT id FROM metric_series
                WHERE family = b.family AND labels = b.labels AND part = b.part AND kind = 'g'
                LIMIT 1) AS s
            ORDER BY s.id
            ON CONFLICT (series_id, shard) DO UPDATE
                SET value = CASE WHEN EXCLUDED.updated_at >= v.updated_at
                                 THEN EXCLUDED.value ELSE v.value END,
                    updated_at = greatest(v.updated_at, EXCLUDED.updated_at)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM written)
        INTO v_more, v_more_written;
        v_expected := v_expected + v_more;
        v_written := v_written + v_more_written;
    END IF;

    IF v_written < v_expected AND NOT p_new_series THEN
        RAISE EXCEPTION 'metrics_flush: % of % series are not in metric_series',
            v_expected - v_written, v_expected
            USING ERRCODE = 'MF001', HINT = 'call again with p_new_series = true';
    END IF;
    RETURN v_written;
END
$$;
