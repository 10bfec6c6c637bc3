"""What the tests share, in one place (no tests here): the handlers as Lambda loads them
(runtime), database connections (db), and helpers per area (metrics, retention,
monitoring, logs_insights, prometheus, binaries, doc_commands)."""
