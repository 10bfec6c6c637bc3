"""Source of slo.rules.yml: the service level objectives, their error budgets and the
multi-window, multi-burn-rate alerts of the Google SRE workbook (chapter 5).

    make generate   # also the dashboard and the README's settings table

The objectives and the latency threshold are set here and nowhere else:
tests/monitoring/test_slo.py checks that the committed rules are this file's output and that
the CloudWatch alarms in template.yaml use the same objective and burn rates.
Health probes and /metrics scrapes are left out through the catalogue's
PROBE_ROUTES, the list the CloudWatch mirror uses too (probes go to
`health_probe_requests`, not `http_requests`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from ops.metrics.catalogue import HTTP_BUCKETS, PROBE_ROUTES
from ops.metrics.text_format import format_bound

BUDGET_PERIOD = "30d"
BUDGET_INTERVAL = "5m"  # how often the budget-period ratio is evaluated
# The windows the burn-rate alerts read; the budget period is recorded for the dashboard.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
LATENCY_THRESHOLD_S = 0.2  # seed 003: p95 under 200 ms

# Every request of the API except health probes and scrapes (PROBE_ROUTES).
NOT_A_PROBE = 'route!~"{}"'.format("|".join(re.escape(r) for r in PROBE_ROUTES))


@dataclass(frozen=True)
class Slo:
    name: str  # the `slo` label
    alert_prefix: str
    objective: float  # share of good events over BUDGET_PERIOD
    meaning: str  # what a good event is, for annotations
    bad: str  # PromQL rate of bad events, `{w}` the window
    total: str  # PromQL rate of all events

    @property
    def percent(self) -> str:
        return f"{self.objective * 100:g}%"

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 10)

    def error_ratio(self, window: str) -> str:
        bad, total = (q.replace("{w}", window) for q in (self.bad, self.total))
        return f"({bad})\n/\n{total}\n"


# Not a whole number, so one spelling in every client and in Prometheus 3 ("0.2"; a
# whole bound would need both "1" and "1.0", as alerts.yml's HighToolLatency matches).
_LE = f'le="{format_bound(LATENCY_THRESHOLD_S)}"'

SLOS = (
    Slo(
        name="availability",
        alert_prefix="Availability",
        objective=0.999,  # seed 003: 99.9% uptime, error rate under 0.1%
        meaning="API requests answered without a 5xx",
        bad=f'sum(rate(http_requests_total{{{NOT_A_PROBE},status=~"5.."}}[{{w}}])) or vector(0)',
        total=f"sum(rate(http_requests_total{{{NOT_A_PROBE}}}[{{w}}]))",
    ),
    Slo(
        name="latency",
        alert_prefix="Latency",
        objective=0.95,  # seed 003: p95 under 200 ms, i.e. 95% of requests within 200 ms
        meaning=f"API requests answered within {LATENCY_THRESHOLD_S * 1000:g} ms",
        bad=(
            f"sum(rate(http_request_duration_seconds_count{{{NOT_A_PROBE}}}[{{w}}]))\n"
            f"- sum(rate(http_request_duration_seconds_bucket{{{NOT_A_PROBE},{_LE}}}[{{w}}]))"
        ),
        total=f"sum(rate(http_request_duration_seconds_count{{{NOT_A_PROBE}}}[{{w}}]))",
    ),
)


@dataclass(frozen=True)
class BurnTier:
    """Alert when the error ratio is above `burn` times the budget over both windows: the
    long one says the budget is really going, the short one that it still is (so the
    alert resolves soon after the service recovers)."""

    severity: str
    long: str
    short: str
    burn: float
    budget_spent: str  # of the 30-day budget, if it went on like this for the long window


# The workbook's table, plus its 1d/2h tier: two page tiers, two ticket tiers.
TIERS = (
    BurnTier("critical", "1h", "5m", 14.4, "2% in 1 hour"),
    BurnTier("critical", "6h", "30m", 6, "5% in 6 hours"),
    BurnTier("warning", "1d", "2h", 3, "10% in 1 day"),
    BurnTier("warning", "3d", "6h", 1, "10% in 3 days"),
)
ALERTS = {"critical": "BudgetFastBurn", "warning": "BudgetSlowBurn"}


def record_name(window: str) -> str:
    return f"slo:sli_error:ratio_rate{window}"


def _burn_expr(slo: Slo, tier: BurnTier) -> str:
    sel = f'{{slo="{slo.name}"}}'
    return (
        f"(\n  {record_name(tier.long)}{sel} / {slo.budget} > {tier.burn}\n"
        f"  and\n  {record_name(tier.short)}{sel} / {slo.budget} > {tier.burn}\n)"
    )


def _alert(slo: Slo, severity: str) -> dict[str, object]:
    tiers = [t for t in TIERS if t.severity == severity]
    windows = " or ".join(f"{t.burn:g}x over {t.long} and {t.short}" for t in tiers)
    name = f"{slo.alert_prefix}{ALERTS[severity]}"
    kind = "page" if severity == "critical" else "ticket"
    return {
        "alert": name,
        "expr": "\nor\n".join(_burn_expr(slo, t) for t in tiers) + "\n",
        "labels": {"severity": severity, "slo": slo.name},
        "annotations": {
            "summary": f"{slo.name.capitalize()} SLO: error budget burning "
            f"{'fast' if severity == 'critical' else 'slowly'} ({kind})",
            "description": (
                f"The {slo.name} SLO ({slo.percent} of {slo.meaning} over "
                f"{BUDGET_PERIOD}) is spending its error budget {{{{ $value | humanize }}}}x "
                f"as fast as the budget allows (alert: {windows}; "
                + ", ".join(f"{t.burn:g}x spends {t.budget_spent}" for t in tiers)
                + ")."
            ),
            "runbook": f"infra/monitoring/README.md#{slo.alert_prefix.lower()}budgetburn",
        },
    }


def rules() -> dict[str, object]:
    recording: list[dict[str, object]] = []
    budget: list[dict[str, object]] = []
    for slo in SLOS:
        labels = {"slo": slo.name}
        recording.append(
            {"record": "slo:objective:ratio", "expr": f"vector({slo.objective})", "labels": labels}
        )
        recording.append(
            {"record": "slo:error_budget:ratio", "expr": f"vector({slo.budget})", "labels": labels}
        )
        for window in WINDOWS:
            recording.append(
                {"record": record_name(window), "expr": slo.error_ratio(window), "labels": labels}
            )
        budget.append(
            {
                "record": record_name(BUDGET_PERIOD),
                "expr": slo.error_ratio(BUDGET_PERIOD),
                "labels": labels,
            }
        )
    alerts = [_alert(slo, severity) for slo in SLOS for severity in ALERTS]
    return {
        "groups": [
            # One group for the alerts and the ratios they read: its rules run in order,
            # so the alerts see this evaluation's ratios (across groups, which Prometheus
            # evaluates independently, they could lag one evaluation).
            {"name": "realestate-backend-slo", "rules": recording + alerts},
            # The budget period reads every sample of 30 days and only the dashboard uses
            # it: every BUDGET_INTERVAL is enough (benchmarks/README.md, suite slo).
            {"name": "realestate-backend-slo-budget", "interval": BUDGET_INTERVAL, "rules": budget},
        ]
    }


HEADER = """\
# GENERATED by infra/monitoring/slo.py: edit that file, then
#   make generate
#
# SLOs over {period}: {slos}.
# slo:sli_error:ratio_rate<window> is the share of bad events over the window (health
# probes and /metrics scrapes excluded); a burn rate is that share divided by the
# error budget (slo:error_budget:ratio). Alerts: the Google SRE workbook's
# multi-window, multi-burn-rate table. Unit tests: slo.test.yml.
"""


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        return True  # repeat the labels rather than write YAML anchors


_Dumper.add_representer(str, _block_strings)


def render() -> str:
    slos = ", ".join(f"{s.name} {s.percent}" for s in SLOS)
    body = yaml.dump(rules(), Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER.format(period=BUDGET_PERIOD, slos=slos) + "\n" + body


assert LATENCY_THRESHOLD_S in HTTP_BUCKETS, "the latency threshold must be a bucket bound"

if __name__ == "__main__":
    print(render(), end="")
