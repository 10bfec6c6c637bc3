"""The fleet benchmark's section of benchmarks/README.md, from its raw results (also
`python -m benchmarks.fleet_report` on benchmarks/.work/fleet/results.json): measured
numbers, their projection to 1,000 containers x 10 invocations/s, the targets of issue 23,
and the monthly AWS bill for 10, 100 and 1,000 containers."""

from __future__ import annotations

import json
import math
from typing import Any

from benchmarks.fleet_plan import (
    FRESH_S,
    HOUR_LIFETIME_S,
    MAX_CLIENT_CONN,
    PROD_RATE,
    TARGET_CORES,
    TARGET_WAL_GB_DAY,
    Plan,
)
from benchmarks.stats import nearest_rank, verdict
from tools import ROOT

DAY, MONTH_H = 86400, 730
# The one place prices live. ASSUMPTION: AWS's public on-demand prices for us-east-1 as of
# the 2024 price list, first volume tier (larger fleets pay less per API call), not
# fetched at run time: check the current price list before quoting a row.
PRICES = {
    "API Gateway REST, per million requests": 3.50,
    "Lambda, per million requests": 0.20,
    "Lambda arm64, per GB-second": 0.0000133334,
    "CloudWatch Logs ingestion, per GB": 0.50,
    "CloudWatch Logs storage, per GB-month": 0.03,
    "CloudWatch custom metric, per month": 0.30,
    "CloudWatch standard alarm, per month": 0.10,
    "Secrets Manager secret, per month": 0.40,
    "Secrets Manager, per 10,000 API calls": 0.05,
}
MEMORY_GB, LOG_RETENTION_DAYS = 0.25, 30  # template.yaml's MemorySize and LogRetentionDays
TARGET_EMF_BYTES = 50  # per invocation, amortised, at the production rate (issue 23 item 4)


def emf_per_invocation(x: dict[str, Any]) -> float:
    """EMF bytes per invocation of the identities served at PROD_RATE: the window holds
    r T invocations there, so the slower identities' bytes would overstate it."""
    served: int = x["hot"]["served"]
    return float(x["out"]["emf_bytes_hot"]) / max(served, 1)


def _writes_per_container_s(interval: float) -> float:
    """The flush policy's writes at PROD_RATE: one per r x T + 1 invocations, plus a
    birth and a shutdown per lifetime (issue 23 item 1)."""
    return PROD_RATE / (PROD_RATE * interval + 1) + 2 / HOUR_LIFETIME_S


def _measured(x: dict[str, Any], db: str) -> dict[str, Any]:
    w, first, second, _ = x["window"][db]
    inv = x["served_window"]
    samples = x["lock_samples"][db]
    return {
        "ips": inv / w["s"],
        "writes_s": w["xids"] / w["s"],
        "cores": w["cpu_s"] / w["s"],
        "cpu_k": 1e6 * w["cpu_s"] / inv,
        "wal_s": w["wal"] / w["s"],
        "wal_k": 1000 * w["wal"] / inv,
        "xids_k": 1000 * w["xids"] / inv,
        "halves": (first["xids"] / first["s"], second["xids"] / second["s"]),
        "cpu_w": w["cpu_s"] / max(w["xids"], 1),
        "wal_w": w["wal"] / max(w["xids"], 1),
        "locked": sum(n > 0 for n in samples) / max(len(samples), 1),
        "lock_max": max(samples, default=0),
    }


def project(x: dict[str, Any], containers: int) -> dict[str, dict[str, float]]:
    """Cores and WAL GB/day of each database at `containers` x PROD_RATE.

    The flushes' database: its measured cost per write transaction times the policy's
    writes, and a bound scaling that by the rows a write of the identities served at
    PROD_RATE carried over the rows of the average write measured. A database that takes no
    flushes (the application's, beside a metrics database) serves scrapes and checks,
    whose rate does not grow with invocations: its measured cost per second carries over.
    """
    phase = x["phase"]
    rows_sim = x["series_rows"] / max(x["jobs"], 1)
    scale = max(1.0, x["hot"]["rows"] / max(x["hot"]["jobs"], 1) / rows_sim)
    writes = containers * _writes_per_container_s(phase["interval"])
    out = {}
    for db in x["window"]:
        m = _measured(x, db)
        if phase["separate"] and db == "app":  # no flushes: its cost per second carries over
            n, cores, wal, k = 0.0, m["cores"], m["wal_s"] * DAY / 1e9, 1.0
        else:
            n, cores, wal, k = writes, writes * m["cpu_w"], writes * m["wal_w"] * DAY / 1e9, scale
        out[db] = {"writes": n, "cores": cores, "wal": wal, "cores_b": cores * k, "wal_b": wal * k}
    return out


def _meets(x: dict[str, Any], containers: int) -> bool:
    """Counts fresh enough, and the application database's cost (bound) within target."""
    fresh = x["phase"]["interval"] + x["phase"]["scrape_s"] + 1 <= FRESH_S
    cost = project(x, containers)["app"]
    return fresh and cost["cores_b"] <= TARGET_CORES and cost["wal_b"] <= TARGET_WAL_GB_DAY


def bill(x: dict[str, Any], containers: int, alarms: int) -> dict[str, float]:
    """Monthly dollars at `containers` x PROD_RATE, from this phase's bytes and counts."""
    inv = containers * PROD_RATE * 3600 * MONTH_H
    out = x["out"]
    lines_gb, emf_gb = out["log_bytes"] / x["served"] * inv / 1e9, emf_per_invocation(x) * inv / 1e9
    ms = math.ceil(sum(x["invoke_ms"]) / len(x["invoke_ms"]))
    secrets = 2 if x["phase"]["separate"] else 1
    calls = containers * MONTH_H * 3600 / HOUR_LIFETIME_S * secrets  # one fetch per cold start
    p = list(PRICES.values())
    return {
        "API Gateway": inv / 1e6 * p[0],
        "Lambda": inv / 1e6 * p[1] + inv * ms / 1000 * MEMORY_GB * p[2],
        "Logs ingestion: request lines": lines_gb * p[3],
        "Logs ingestion: EMF": emf_gb * p[3],
        "Logs storage": (lines_gb + emf_gb) * LOG_RETENTION_DAYS / 30.4 * p[4],
        "Custom metrics": x["emf_keys"] * p[5],
        "Alarms": alarms * p[6],
        "Secrets Manager": secrets * p[7] + calls / 1e4 * p[8],
    }


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _target(name: str, measured: Any, limit: Any, ok: bool) -> str:
    return _row([name, measured, limit, verdict(ok)])


def _head(names: str) -> tuple[str, str]:
    """A table's header row (`names`: "a | b | c") and its separator."""
    return f"| {names} |", "|" + "---|" * (names.count(" | ") + 1)


def report(plan: Plan, phases: list[dict[str, Any]], load: list[float]) -> str:
    alarms = (ROOT / "template.yaml").read_text().count("Type: AWS::CloudWatch::Alarm")
    by_name = {x["phase"]["name"]: x for x in phases}
    shipped, rec = by_name["shipped defaults"], by_name["recommended"]
    exact = all(
        x["stored"] == x["served"] - x["lost"]["kill"] and x["exposed"] == x["stored"]
        for x in phases
    )
    term_lost = sum(x["lost"]["term"] + x["lost"]["end"] for x in phases)
    over = sum(len(x["over_bound"]) for x in phases)
    lines = [
        f"Plan: {plan.identities:,} identities over {plan.workers} worker processes at "
        f"{plan.rate:g} invocations/s each ({plan.hot} of them at {PROD_RATE:g}/s), lifetimes "
        f"exponential (mean {plan.lifetime_s:g} s), phases of {plan.phase_s:g} s, steady "
        f"window from {plan.warmup_s:g} s after the start to {plan.tail_s:g} s before the end; "
        f"pgbouncer `max_client_conn = {MAX_CLIENT_CONN}`; projections assume containers "
        f"living {HOUR_LIFETIME_S / 3600:g} h.",
        "",
        "### Targets",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
        _target(
            "writes per identity <= floor(lifetime / T) + 2 (all phases)",
            f"{over} of {sum(x['identities'] for x in phases):,} identities over",
            0,
            over == 0,
        ),
        _target("counts lost by identities ended with SIGTERM", term_lost, 0, term_lost == 0),
        _target(
            "stored = served - what SIGKILLed identities held; `/metrics` = stored",
            "exact" if exact else "MISMATCH",
            "exact",
            exact,
        ),
    ]
    cost, emf, at = project(rec, 1000)["app"], emf_per_invocation(rec), f"{PROD_RATE:g}/s"
    lines += [
        _target(
            f"recommended, 1,000 x {at}: application database CPU",
            f"{cost['cores_b']:.3f} cores",
            f"{TARGET_CORES} core",
            cost["cores_b"] <= TARGET_CORES,
        ),
        _target(
            f"recommended, 1,000 x {at}: application database WAL",
            f"{cost['wal_b']:.2f} GB/day",
            f"{TARGET_WAL_GB_DAY:g} GB/day",
            cost["wal_b"] <= TARGET_WAL_GB_DAY,
        ),
        _target(
            f"recommended, at {at} per container: EMF bytes per invocation",
            f"{emf:.0f}",
            TARGET_EMF_BYTES,
            emf <= TARGET_EMF_BYTES,
        ),
    ]
    ship = project(shipped, 1000)["app"]
    lines += [
        _row(
            [
                "shipped defaults, 1,000 x 10/s, application database (stated, no limit)",
                f"{ship['cores']:.2f}-{ship['cores_b']:.2f} cores, "
                f"{ship['wal']:.1f}-{ship['wal_b']:.1f} GB/day",
                "-",
                "-",
            ]
        ),
        "",
        "### Measured",
        "",
        *_head(
            "phase | T s / scrape s | database | inv/s | writes/s (halves) | CPU cores "
            "| CPU ms per 1,000 inv | WAL KiB/s | WAL KiB per 1,000 inv | writes per 1,000 inv "
            "| lock waits | flush ms"
        ),
    ]
    for x in phases:
        fl = x["flush_ms"]
        for db in x["window"]:
            m = _measured(x, db)
            lines.append(
                _row(
                    [
                        x["phase"]["name"],
                        f"{x['phase']['interval']:g} / {x['phase']['scrape_s']:g}",
                        db,
                        f"{m['ips']:,.0f}",
                        f"{m['writes_s']:,.1f} ({m['halves'][0]:,.1f}, {m['halves'][1]:,.1f})",
                        f"{m['cores']:.3f}",
                        f"{m['cpu_k']:,.1f}",
                        f"{m['wal_s'] / 1024:,.1f}",
                        f"{m['wal_k'] / 1024:,.1f}",
                        f"{m['xids_k']:,.1f}",
                        f"{100 * m['locked']:.0f}% (max {m['lock_max']})",
                        f"{nearest_rank(fl, 50):.1f} / {nearest_rank(fl, 99):.1f}" if fl else "-",
                    ]
                )
            )
    lines += [
        "",
        f"### Projected to containers x {PROD_RATE:g}/s",
        "",
        _row(["phase", "containers", "database", "writes/s", "CPU cores", "WAL GB/day"]),
        "|---|---|---|---|---|---|",
    ]
    for x in phases:
        for n in (10, 100, 1000):
            for db, c in project(x, n).items():
                lines.append(
                    _row(
                        [
                            x["phase"]["name"],
                            f"{n:,}",
                            db,
                            f"{c['writes']:,.1f}",
                            f"{c['cores']:.3f} - {c['cores_b']:.3f}",
                            f"{c['wal']:.2f} - {c['wal_b']:.2f}",
                        ]
                    )
                )
    lines += [
        "",
        "### Exactness, churn and what identities print",
        "",
        *_head(
            "phase | identities (SIGTERM / SIGKILL / end) | served | stored | `/metrics` "
            f"| lost: SIGKILL | writes (jobs) | rows per write (at {PROD_RATE:g}/s) "
            f"| writes per 1,000 inv at {PROD_RATE:g}/s (policy, births and shutdowns aside: "
            "1,000 / (r T + 1)) | invocations > 100 ms late (max lag ms) "
            "| log bytes / EMF bytes per invocation | EMF documents per invocation "
            "| scrape ms (max)"
        ),
    ]
    for x in phases:
        e, o, s, hot = x["ends"], x["out"], x["served"], x["hot"]
        policy = 1000 / (PROD_RATE * x["phase"]["interval"] + 1)
        lines.append(
            _row(
                [
                    x["phase"]["name"],
                    f"{x['identities']:,} ({e['term']} / {e['kill']} / {e['end']})",
                    f"{s:,}",
                    f"{x['stored']:,}",
                    f"{x['exposed']:,}",
                    f"{x['lost']['kill']:,}",
                    f"{x['jobs']:,}",
                    f"{x['series_rows'] / max(x['jobs'], 1):.1f} "
                    f"({hot['rows'] / max(hot['jobs'], 1):.1f})",
                    f"{1000 * hot['jobs'] / max(hot['served'], 1):.1f} ({policy:.1f})",
                    f"{x['late']:,} ({x['max_lag_ms']:,.0f})",
                    f"{o['log_bytes'] / s:,.0f} / {o['emf_bytes'] / s:,.0f}",
                    f"{o['emf_docs'] / s:.2f}",
                    f"{max(x['scrape_ms']):,.0f}" if x["scrape_ms"] else "-",
                ]
            )
        )
    lines += _bill_section(phases, by_name, alarms)
    lines += [
        "",
        f"Load (1 min) after each phase: {', '.join(f'{v:.2f}' for v in load[1:])}. Raw "
        "numbers: `benchmarks/.work/fleet/results.json`.",
    ]
    return "\n".join(lines)


def _bill_section(phases: list[dict[str, Any]], by_name: dict[str, Any], alarms: int) -> list[str]:
    order = [
        by_name[n]
        for n in ("shipped defaults", "recommended interval, one database", "recommended")
        if n in by_name
    ]
    lines = [
        "",
        "### Settings by fleet size, and the monthly AWS bill",
        "",
        f"{alarms} alarms (template.yaml), logs kept {LOG_RETENTION_DAYS} days, Lambda at "
        f"{MEMORY_GB * 1024:g} MB arm64. Prices (an assumption, not fetched): "
        + "; ".join(f"{k} ${v:g}" for k, v in PRICES.items())
        + ".",
        "",
    ]
    keys = list(bill(phases[0], 10, alarms))
    lines += [
        _row(["containers", "settings", "app DB cores / WAL GB/day", *keys, "total"]),
        "|" + "---|" * (len(keys) + 4),
    ]
    for n in (10, 100, 1000):
        pick = next((x for x in order if _meets(x, n)), order[-1])
        p, c, b = pick["phase"], project(pick, n)["app"], bill(pick, n, alarms)
        what = (
            f"`METRICS_FLUSH_INTERVAL_S={p['interval']:g}`, scrape {p['scrape_s']:g} s"
            + (", `METRICS_DATABASE_URL`" if p["separate"] else "")
            + ("" if _meets(pick, n) else " (none measured meets the targets)")
        )
        lines.append(
            _row(
                [
                    f"{n:,}",
                    what,
                    f"{c['cores_b']:.3f} / {c['wal_b']:.2f}",
                    *(f"${b[k]:,.0f}" for k in keys),
                    f"${sum(b.values()):,.0f}",
                ]
            )
        )
    return lines


if __name__ == "__main__":
    raw = json.loads((ROOT / "benchmarks" / ".work" / "fleet" / "results.json").read_text())
    plan = Plan(**{**raw["plan"], "phases": ()})
    print(report(plan, raw["phases"], raw["load"]))
