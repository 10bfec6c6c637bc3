"""The operator kit: alert and recording rules, dashboards, the runbook; `slo` and
`grafana_dashboard` write slo.rules.yml and grafana-dashboard.json (`make generate`)."""
