-- Counters fold into one total row per series as they are flushed (issue 13).
--
-- Until now each container added its counter deltas to its own shard's row of a
-- series, so that concurrent containers did not queue on one row lock, and every
-- scrape summed series x shards rows (35,000 rows for 2,200 series in 16 shards,
-- most of a scrape's time). Now a flush adds each delta to the series' total row
-- (shard 0) when it can lock that row without waiting, and only to its own shard's
-- row (a spill row) when another flush holds the total. Spill rows exist only where
-- flushes really collided; the metrics function's compaction folds them into the
-- totals once they are idle. A scrape reads about one row per series plus the
-- spills of the last minutes.
--
-- No deadlock: a flush first creates missing total rows (in series id order, and
-- waiting only on another transaction's insert of the same row), then locks the
-- free totals without waiting (SKIP LOCKED), and only then waits, for its own
-- shard's rows, in series id order. Compaction never waits on a row lock (both
-- sides SKIP LOCKED). A container whose shard is 0 writes the totals directly,
-- waiting in series id order, as before. Gauges are unchanged: a row per shard,
-- the newest reading wins.

-- Every counter series gets its total row (spill rows are folded by compaction).
INSERT INTO metric_values (series_id, shard, value, updated_at)
SELECT s.id, 0, 0, now() FROM metric_series AS s
WHERE s.kind = 'c'
ORDER BY s.id
ON CONFLICT (series_id, shard) DO NOTHING;

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
    v_totalled integer[];
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
    -- series on every flush), once, into arrays sorted by series id.
    IF p_counters IS NOT NULL THEN
        SELECT count(*),
               array_agg(s.id ORDER BY s.id) FILTER (WHERE s.id IS NOT NULL),
               array_agg(b.value ORDER BY s.id) FILTER (WHERE s.id IS NOT NULL),
               array_agg(b.at ORDER BY s.id) FILTER (WHERE s.id IS NOT NULL)
        INTO v_expected, v_ids, v_values, v_ats
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
            LIMIT 1) AS s ON true;
        v_written := coalesce(cardinality(v_ids), 0);

        IF v_written > 0 AND p_shard <> 0 THEN
            -- A series' first flush creates its total row.
            INSERT INTO metric_values (series_id, shard, value, updated_at)
            SELECT u.id, 0, 0, to_timestamp(u.at)
            FROM unnest(v_ids, v_ats) AS u(id, at)
            WHERE NOT EXISTS (
                SELECT 1 FROM metric_values AS v WHERE v.series_id = u.id AND v.shard = 0)
            ORDER BY u.id
            ON CONFLICT (series_id, shard) DO NOTHING;

            -- The totals no other flush holds take the deltas...
            WITH free AS (
                SELECT v.series_id FROM metric_values AS v
                WHERE v.shard = 0 AND v.series_id = ANY (v_ids)
                ORDER BY v.series_id
                FOR UPDATE SKIP LOCKED
            ), totalled AS (
                UPDATE metric_values AS v
                SET value = v.value + u.value,
                    updated_at = greatest(v.updated_at, to_timestamp(u.at))
                FROM unnest(v_ids, v_values, v_ats) AS u(id, value, at)
                WHERE v.shard = 0 AND v.series_id = u.id
                  AND v.series_id IN (SELECT series_id FROM free)
                RETURNING v.series_id
            )
            SELECT array_agg(series_id) INTO v_totalled FROM totalled;
        END IF;

        -- ...the others go to this container's shard (all of them when it is shard 0).
        INSERT INTO metric_values AS v (series_id, shard, value, updated_at)
        SELECT u.id, p_shard, u.value, to_timestamp(u.at)
        FROM unnest(v_ids, v_values, v_ats) AS u(id, value, at)
        WHERE v_totalled IS NULL OR u.id <> ALL (v_totalled)
        ORDER BY u.id
        ON CONFLICT (series_id, shard) DO UPDATE
            SET value = v.value + EXCLUDED.value,
                updated_at = greatest(v.updated_at, EXCLUDED.updated_at);
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
