-- A team's own metric families reach /metrics (issue 20).
--
-- The metrics function renders the families it declares itself (the layer's catalogue);
-- a family declared in another function's code (`from ops.metrics import Counter`) was
-- stored and never exposed, because its shape (type, help, label names, buckets) stayed
-- in that function's process. Now a container declares each of its own families here
-- with its first flush of it (metrics_declare, in the flush's transaction), and the
-- scrape renders the stored families it does not declare itself.
--
-- One name, one shape: a function may change the shape of a family it declared (a new
-- deploy: the newest declaration wins), another function may declare the same name
-- only with the same shape. A different one is refused (SQLSTATE MF002, the names in
-- DETAIL, one per line); the caller drops that family's deltas, logs and counts it, and
-- flushes the rest. The catalogue's families are reserved: the metrics function writes
-- their shapes (metrics_reserve, declared_by '') at its first scrape, and a team's
-- function built on another layer version cannot redeclare them with another shape.

CREATE TABLE IF NOT EXISTS metric_families (
    family      text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('counter', 'gauge', 'histogram')),
    help        text NOT NULL,
    labels      text[] NOT NULL,
    buckets     float8[] NOT NULL,  -- a histogram's upper bounds (without +Inf), else empty
    declared_by text NOT NULL,      -- the function (AWS_LAMBDA_FUNCTION_NAME); '': the catalogue
    declared_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION metrics_declare(p_function text, p_families json)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    f         record;
    v_row     metric_families%ROWTYPE;
    v_refused text[] := '{}';
    v_changed integer := 0;
BEGIN
    -- Sorted by name: concurrent declarations lock rows in one order.
    FOR f IN
        SELECT r.family, r.kind, r.help,
               ARRAY(SELECT json_array_elements_text(r.labels)) AS labels,
               ARRAY(SELECT json_array_elements_text(r.buckets)::float8) AS buckets
        FROM json_to_recordset(p_families)
            AS r(family text, kind text, help text, labels json, buckets json)
        ORDER BY r.family
    LOOP
        INSERT INTO metric_families (family, kind, help, labels, buckets, declared_by)
        VALUES (f.family, f.kind, f.help, f.labels, f.buckets, p_function)
        ON CONFLICT (family) DO NOTHING;
        IF FOUND THEN
            v_changed := v_changed + 1;
            CONTINUE;
        END IF;
        SELECT * INTO v_row FROM metric_families WHERE family = f.family FOR UPDATE;
        IF (v_row.kind, v_row.help, v_row.labels, v_row.buckets)
           IS NOT DISTINCT FROM (f.kind, f.help, f.labels, f.buckets) THEN
            CONTINUE;
        END IF;
        IF v_row.declared_by = p_function AND p_function <> '' THEN  -- a new deploy
            UPDATE metric_families
            SET kind = f.kind, help = f.help, labels = f.labels, buckets = f.buckets,
                declared_at = now()
            WHERE family = f.family;
            v_changed := v_changed + 1;
        ELSE
            v_refused := v_refused || format('%s: declared by %s as %s%s%s; %s declares %s%s%s',
                f.family, coalesce(nullif(v_row.declared_by, ''), 'the catalogue (reserved)'),
                v_row.kind, v_row.labels,
                CASE WHEN v_row.help = f.help THEN '' ELSE ' with another help text' END,
                p_function, f.kind, f.labels,
                CASE WHEN v_row.buckets = f.buckets THEN ''
                     ELSE format(' buckets %s (stored %s)', f.buckets, v_row.buckets) END);
        END IF;
    END LOOP;
    IF cardinality(v_refused) > 0 THEN
        RAISE EXCEPTION 'metrics_declare: % metric famil% declared with another shape',
            cardinality(v_refused), CASE WHEN cardinality(v_refused) = 1 THEN 'y' ELSE 'ies' END
            USING ERRCODE = 'MF002', DETAIL = array_to_string(v_refused, E'\n'),
                  HINT = 'one name, one shape: rename the family, or declare it as stored';
    END IF;
    RETURN v_changed;
END
$$;

-- The metrics function's catalogue, at its first scrape: the layer it runs is the
-- authority on these names (a new layer version may change a shape, or take a name a
-- team declared first: that team's flushes are refused from then on, loudly).
CREATE OR REPLACE FUNCTION metrics_reserve(p_families json)
RETURNS integer
LANGUAGE sql
AS $$
    WITH reserved AS (
        INSERT INTO metric_families AS m (family, kind, help, labels, buckets, declared_by)
        SELECT r.family, r.kind, r.help,
               ARRAY(SELECT json_array_elements_text(r.labels)),
               ARRAY(SELECT json_array_elements_text(r.buckets)::float8), ''
        FROM json_to_recordset(p_families)
            AS r(family text, kind text, help text, labels json, buckets json)
        ORDER BY r.family
        ON CONFLICT (family) DO UPDATE
            SET kind = EXCLUDED.kind, help = EXCLUDED.help, labels = EXCLUDED.labels,
                buckets = EXCLUDED.buckets, declared_by = '', declared_at = now()
            WHERE (m.kind, m.help, m.labels, m.buckets, m.declared_by)
                  IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.help, EXCLUDED.labels,
                                    EXCLUDED.buckets, '')
        RETURNING 1
    )
    SELECT count(*)::integer FROM reserved
$$;
