"""Stand-ins for the services outside the bundle, on loopback: Sentry's ingest, an OTLP
collector, a misbehaving network (`tcp_proxy`), a real Prometheus (`prometheus`, and
`prom` for `make prom`), the outage measurement built on them (`outage_story`), and the
loopback server they share (`loopback`)."""
