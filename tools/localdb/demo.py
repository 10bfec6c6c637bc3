"""Demo rows for a local run: some fresh, some past their retention age."""

from __future__ import annotations

import pg8000.native

DEMO_SQL = """
INSERT INTO inbound_events (source, event_type, payload, received_at)
SELECT 'whatsapp', 'message', jsonb_build_object('n', g), now() - (g || ' hours')::interval
FROM generate_series(1, 1200) AS g;
INSERT INTO chat_sessions (channel, user_ref, updated_at)
SELECT 'whatsapp', 'user-' || g, now() - (g * 3 || ' minutes')::interval
FROM generate_series(1, 50) AS g;
INSERT INTO chat_sessions (channel, user_ref, updated_at)
SELECT 'telegram', 'old-' || g, now() - (90 + g || ' days')::interval
FROM generate_series(1, 20) AS g;
"""


def load_demo(conn: pg8000.native.Connection) -> bool:
    """Loads once: a database that already has events is left as it is."""
    if conn.run("SELECT EXISTS (SELECT 1 FROM inbound_events)")[0][0]:
        return False
    conn.run(DEMO_SQL)
    return True
