-- Core tables of the backend that this bundle observes and maintains.

CREATE TABLE IF NOT EXISTS inbound_events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    source      text        NOT NULL,
    event_type  text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
);
-- Retention deletes by received_at in batches: this index is what keeps each batch short.
CREATE INDEX IF NOT EXISTS inbound_events_received_at_idx ON inbound_events (received_at);

CREATE TABLE IF NOT EXISTS chat_sessions (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    channel    text        NOT NULL,
    user_ref   text        NOT NULL,
    state      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
);
-- Serves both retention (old rows) and the active_sessions gauge (recent rows).
CREATE INDEX IF NOT EXISTS chat_sessions_updated_at_idx ON chat_sessions (updated_at);

-- Audit log: append-only, enforced in the database, never pruned (compliance).
CREATE TABLE IF NOT EXISTS audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor_type  text        NOT NULL,
    actor_id    text        NOT NULL,
    action      text        NOT NULL,
    entity      text        NOT NULL,
    entity_id   text,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS audit_logs_entity_idx ON audit_logs (entity, occurred_at);

CREATE OR REPLACE FUNCTION audit_logs_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit entries are never updated, deleted or pruned';
END
$$;

DROP TRIGGER IF EXISTS audit_logs_no_update_delete ON audit_logs;
CREATE TRIGGER audit_logs_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_append_only();

DROP TRIGGER IF EXISTS audit_logs_no_truncate ON audit_logs;
CREATE TRIGGER audit_logs_no_truncate
    BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only();
