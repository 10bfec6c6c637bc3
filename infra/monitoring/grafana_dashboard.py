"""Source of grafana-dashboard.json (importable as is; the datasource is an import input).

    make generate   # also slo.rules.yml and the README's settings table

Not grafana-foundation-sdk: it cannot write `__inputs`/`__requires`, so the dashboard
would no longer ask for its Prometheus datasource when imported (benchmarks/README.md,
suite libraries). The panels are declared here rather than edited in 1,000 lines of JSON;
tests/monitoring/test_monitoring.py checks that the committed JSON is this file's output
and validates every panel's PromQL with promtool. Expensive expressions read the
series recorded by recording-rules.yml.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infra.monitoring import slo  # the SLO parameters, which the panel descriptions quote

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
ROUTE = 'route=~"$route"'
LATENCY_BY_ROUTE = f"route_le:http_request_duration_seconds_bucket:rate5m{{{ROUTE}}}"
SELECTED = "route_method_status:http_requests:rate5m"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def _quantiles(by: str, source: str, quantiles: tuple[str, ...]) -> list[tuple[str, str]]:
    grouping = f"{by}, le" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({grouping}) ({source}))", f"{prefix}p{q[2:]}")
        for q in quantiles
    ]


# Burn rate: the error ratio over a window divided by the error budget (slo.rules.yml).
def _burn(window: str) -> str:
    return f"slo:sli_error:ratio_rate{window} / on (slo) slo:error_budget:ratio"


ROWS = [
    Row(
        "Traffic",
        [
            Panel(
                "Request rate by route",
                [
                    (
                        f"sum by (route) (route_method_status:http_requests:rate5m{{{ROUTE}}})",
                        "{{route}}",
                    )
                ],
                "reqps",
            ),
            Panel(
                "Responses by status",
                [
                    (
                        f"sum by (status) (route_method_status:http_requests:rate5m{{{ROUTE}}})",
                        "{{status}}",
                    )
                ],
                "reqps",
            ),
            Panel(
                "5xx error rate",
                [
                    (
                        f'(sum({SELECTED}{{status=~"5..",{ROUTE}}})'
                        f" or 0 * sum({SELECTED}{{{ROUTE}}}))"
                        f" / sum({SELECTED}{{{ROUTE}}})",
                        "selected routes",
                    ),
                    ("job:http_requests_5xx:ratio_rate5m", "API (probe routes excluded)"),
                ],
                "percentunit",
                "Share of responses that are 5xx. Alert HighErrorRate: API routes (health"
                " routes excluded) above 5% for 5m. 0% only when responses were counted and"
                " none was a 5xx; no data while the counts cannot be read (Database up 0):"
                " they arrive after the database is back.",
            ),
            Panel(
                "Scrape up",
                [('up{job="realestate-backend"}', "{{instance}}")],
                "none",
                "1 when Prometheus can read /metrics. Alert MetricsScrapeDown.",
                kind="stat",
                width=6,
            ),
            Panel(
                "Database up",
                [("min(database_up)", "database")],
                "none",
                "Measured by every scrape: 1 when /metrics reached the database and read"
                " the stored counts. Alert DatabaseDown.",
                kind="stat",
                width=6,
            ),
        ],
    ),
    Row(
        "Latency",
        [
            Panel(
                "Request latency p50 / p95 / p99",
                _quantiles("", LATENCY_BY_ROUTE, ("0.50", "0.95", "0.99")),
                "s",
                "Objective: p95 under 500 ms per route (alert HighRequestLatency). Buckets"
                " start at 1 ms (0.001, 0.0025, 0.005, 0.01, 0.05 s, ...), so the health"
                " routes' ~1 ms reads as such, not as the 9.5 ms a first bucket of 10 ms made"
                " of every fast route.",
            ),
            Panel(
                "p95 latency by route",
                _quantiles("route", LATENCY_BY_ROUTE, ("0.95",)),
                "s",
            ),
            Panel(
                "Tool call latency p50 / p95",
                _quantiles(
                    "tool", "tool_le:tool_call_duration_seconds_bucket:rate5m", ("0.50", "0.95")
                ),
                "s",
                "Capped at 5 s, the highest bucket. Alert HighToolLatency.",
            ),
            Panel(
                "Tool calls by status",
                [("sum by (tool, status) (rate(tool_calls_total[5m]))", "{{tool}} {{status}}")],
                "ops",
            ),
        ],
    ),
    Row(
        "Messaging",
        [
            Panel(
                "Webhook failures",
                [("sum by (source) (rate(webhook_failures_total[5m]))", "{{source}}")],
                "ops",
                "Alert HighWebhookFailures: above 10/s for 2m.",
            ),
            Panel(
                "Pairing failures",
                [("sum by (channel) (rate(pairing_failures_total[15m]))", "{{channel}}")],
                "ops",
                "Alert RepeatedPairingFailures: above 5/s over 15m for 5m (possible attack).",
            ),
            Panel(
                "Active sessions",
                [("sum(active_sessions)", "active sessions")],
                "none",
                "Chat sessions updated within the active window, counted at scrape time.",
            ),
        ],
    ),
    Row(
        "Database and health checks",
        [
            Panel(
                "Database connections by state",
                [("sum by (state) (db_connections)", "{{state}}")],
                "none",
            ),
            Panel(
                "Database query latency p95",
                _quantiles(
                    "operation", "operation_le:db_query_duration_seconds_bucket:rate5m", ("0.95",)
                ),
                "s",
            ),
            Panel(
                "Health check status",
                [("min by (check) (health_check_status)", "{{check}}")],
                "none",
                "Each configured check, run at every scrape: 1 up, 0 down."
                " Alerts DatabaseDown, DependencyDown.",
            ),
            Panel(
                "Health check latency p95",
                _quantiles("check", "rate(health_check_duration_seconds_bucket[5m])", ("0.95",)),
                "s",
            ),
        ],
    ),
    Row(
        "Retention",
        [
            Panel(
                "Rows deleted per day",
                [("sum by (table) (increase(retention_rows_deleted_total[1d]))", "{{table}}")],
                "short",
            ),
            Panel(
                "Retention lag",
                [("max by (table) (retention_lag_seconds)", "{{table}}")],
                "s",
                "How far each table is behind its policy (0 when fully pruned).",
            ),
            Panel(
                "Time since last successful run",
                [
                    (
                        "time() - max by (table) (retention_last_success_timestamp_seconds)",
                        "{{table}}",
                    )
                ],
                "s",
                "Alert RetentionNotSucceeded above 26 h.",
            ),
            Panel(
                "Oldest row age",
                [("max by (table) (retention_oldest_row_age_seconds)", "{{table}}")],
                "s",
            ),
            Panel(
                "Retention runs",
                [("sum by (status) (increase(retention_runs_total[1d]))", "{{status}}")],
                "short",
            ),
            Panel(
                "Retention run duration p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(retention_run_duration_seconds_bucket[1d])))",
                        "p95",
                    )
                ],
                "s",
            ),
        ],
    ),
    Row(
        "Pipeline health",
        [
            Panel(
                "Metric flush failures",
                [
                    (
                        "sum by (function) (increase(metrics_flush_failures_total[5m]))",
                        "{{function}}",
                    )
                ],
                "short",
                "Alert MetricsFlushFailing: failures in every 5m window for 10m.",
            ),
            Panel(
                "Errors by function",
                [("sum by (function, kind) (rate(errors_total[5m]))", "{{function}} {{kind}}")],
                "ops",
            ),
        ],
    ),
    Row(
        "SLOs and error budgets",
        [
            Panel(
                f"Error budget remaining ({slo.BUDGET_PERIOD})",
                [(f"1 - {_burn('30d')}", "{{slo}}")],
                "percentunit",
                f"Share of each SLO's {slo.BUDGET_PERIOD} error budget still unspent (below 0:"
                " overspent). Objectives: infra/monitoring/slo.py.",
                kind="stat",
                width=8,
            ),
            Panel(
                "Burn rate by SLO",
                [(_burn(w), f"{{{{slo}}}} {w}") for w in ("5m", "1h", "6h", "3d")],
                "none",
                f"1 spends the budget in exactly {slo.BUDGET_PERIOD}. "
                + "; ".join(
                    f"{slo.ALERTS[t.severity]}: {t.burn:g} over {t.long} and {t.short}"
                    for t in slo.TIERS
                )
                + ".",
                width=16,
            ),
            Panel(
                "SLI against objective (1h)",
                [
                    ("1 - slo:sli_error:ratio_rate1h", "{{slo}}"),
                    ("slo:objective:ratio", "{{slo}} objective"),
                ],
                "percentunit",
                "Good share of API requests (health probes and scrapes excluded): "
                + "; ".join(f"{s.name}: {s.meaning}, objective {s.percent}" for s in slo.SLOS)
                + ".",
                width=24,
            ),
        ],
    ),
    # The database's own performance, read live by each scrape (functions/metrics/
    # live_gauges.py); thresholds as in alerts.yml's realestate-backend-database group.
    Row(
        "Database server (read at each scrape)",
        [
            Panel(
                "Database connections vs max_connections",
                [("max(pg_connections_in_use / pg_settings_max_connections)", "in use")],
                "percentunit",
                "Client connections to the server (every database) over max_connections."
                " Alert DatabaseConnectionsHigh: above 80% (warning), 95% (critical) for 2m.",
                width=8,
            ),
            Panel(
                "Commits and rollbacks",
                [
                    ("sum(rate(pg_stat_database_xact_commit_total[5m]))", "commits"),
                    ("sum(rate(pg_stat_database_xact_rollback_total[5m]))", "rollbacks"),
                ],
                "ops",
                "Transactions per second in this database (pg_stat_database).",
                width=8,
            ),
            Panel(
                "Rollback ratio",
                [
                    (
                        "sum(rate(pg_stat_database_xact_rollback_total[5m])) / ("
                        "sum(rate(pg_stat_database_xact_commit_total[5m]))"
                        " + sum(rate(pg_stat_database_xact_rollback_total[5m])))",
                        "rollbacks",
                    )
                ],
                "percentunit",
                "Share of transactions rolled back (the seeds name no threshold: no alert).",
                width=8,
            ),
            Panel(
                "Deadlocks",
                [("sum(increase(pg_stat_database_deadlocks_total[1h]))", "per hour")],
                "short",
                "Deadlocks PostgreSQL detected and broke by cancelling one transaction.",
                width=8,
            ),
            Panel(
                "Oldest open transaction, longest running query",
                [
                    ("max(pg_oldest_transaction_age_seconds)", "oldest transaction"),
                    ("max(pg_longest_query_duration_seconds)", "longest query"),
                ],
                "s",
                "Alert LongRunningTransaction: oldest transaction above 5 min (warning),"
                " 30 min (critical).",
                width=8,
            ),
            Panel(
                "Live gauges left out",
                [
                    (
                        "sum by (family, reason) (increase(live_metric_errors_total[15m]))",
                        "{{family}} {{reason}}",
                    )
                ],
                "short",
                "Scrapes that could not read a live gauge (alert LiveMetricFailing).",
                width=8,
            ),
            Panel(
                "Slowest statements by mean (5m)",
                [
                    (
                        "topk(10, max by (queryid) (rate(pg_stat_statements_seconds_total[5m])"
                        " / rate(pg_stat_statements_calls_total[5m])))",
                        "{{queryid}}",
                    ),
                    ("max by (queryid) (pg_stat_statements_mean_seconds)", "{{queryid}} all-time"),
                ],
                "s",
                "pg_stat_statements' statements with the highest mean, by queryid (the text:"
                " runbook, SlowDatabaseQueries). Alert SlowDatabaseQueries: 5-minute mean"
                " above 200 ms (warning), 500 ms (critical).",
                width=24,
            ),
        ],
    ),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    options: dict[str, Any] = (
        {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
        }
        if panel.kind == "stat"
        else {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    )
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def _panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        out.append(
            {
                "id": len(out) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            out.append(_panel_json(panel, len(out) + 1, x, y))
            x += panel.width
        y += 8
    return out


def dashboard() -> dict[str, Any]:
    route_query = "label_values(http_requests_total, route)"
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes realestate-backend",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "realestate-backend operations; runbook: infra/monitoring/README.md",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": _panels(),
        "refresh": "1m",
        "schemaVersion": 39,
        "tags": ["realestate-backend", "serverless", "prometheus"],
        "templating": {
            "list": [
                {
                    "name": "route",
                    "label": "Route",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": route_query,
                    "query": {"query": route_query, "refId": "PrometheusVariableQueryEditor"},
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                    "options": [],
                }
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "realestate-backend: operations",
        "uid": "realestate-backend-ops",
        "version": 1,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
