"""The local database: a throwaway PostgreSQL cluster (`pgcluster`), PgBouncer in front of
it (`pgbouncer`), the database `make run` uses (`run_database`), the migrations
(`migrate`) and demo rows (`demo`)."""
