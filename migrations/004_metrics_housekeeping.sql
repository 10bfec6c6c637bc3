-- Cursor housekeeping moves out of the flush path (issue 8).
--
-- metrics_flush() used to delete day-old cursor rows on a container's first flush,
-- inside the flush's own statement_timeout: with ~250,000 stale rows the delete timed
-- out, the rollback undid the flush, and every new container's flush failed. The
-- flush now only writes; metrics_prune_cursors() deletes stale cursors in bounded
-- batches, called by the metrics function's housekeeping (ops.metrics.totals).

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
BEGIN
    -- A crash may lose the last few hundred milliseconds of flushes; in exchange
    -- row locks are not held across a WAL fsync, which is what bounds throughput.
    PERFORM set_config('synchronous_commit', 'off', true);

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
    -- series on every flush). Value rows are locked in series id order by every
    -- flush, so concurrent flushes cannot deadlock.
    IF p_counters IS NOT NULL THEN
        WITH batch AS (
            SELECT family, labels, part, sum(value) AS value, max(at) AS at
            FROM json_to_recordset(p_counters)
                AS r(seq bigint, family text, labels text, part text, value float8, at float8)
            WHERE seq > v_prev
            GROUP BY family, labels, part
        ), written AS (
            INSERT INTO metric_values AS v (series_id, shard, value, updated_at)
            SELECT s.id, p_shard, b.value, to_timestamp(b.at)
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


-- Deletes up to p_limit cursor rows not seen for p_max_age (a container that has not
-- flushed for a day is gone: Lambda containers live for hours at most), skipping rows
-- being written. Returns how many it deleted; call again while it returns p_limit.
-- No index on seen_at: it is rewritten on every flush, and an index would end the HOT
-- updates that keep the flush cheap. The scan stops once it has p_limit rows.
CREATE OR REPLACE FUNCTION metrics_prune_cursors(
    p_limit integer, p_max_age interval DEFAULT interval '1 day'
) RETURNS integer
LANGUAGE sql
AS $$
    WITH stale AS (
        SELECT container FROM metric_flush_cursors
        WHERE seen_at < now() - p_max_age
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM metric_flush_cursors AS c USING stale
        WHERE c.container = stale.container
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;
