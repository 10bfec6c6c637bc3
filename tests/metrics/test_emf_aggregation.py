"""EMF per flush interval (ops.metrics.emf.EmfBuffer), through the real health handler on
a simulated clock: one document per dimension set per window, sums and SampleCounts
exact against what was served, every value stamped in its own minute, no document held
past the interval while traffic comes, and the whole window printed by a forced flush.

What a container prints when it ends (SIGTERM, exit): test_metrics_shutdown.py.
"""

from __future__ import annotations

import io
import itertools
from collections import Counter, defaultdict
from contextlib import redirect_stdout
from typing import Any

import pytest

from ops.metrics import flush
from tests.support.metrics import EmfClock, emf_lines
from tests.support.runtime import AppEnv, call_api, function_handler

MIXED = ("/health/live", "/health/ready", "/health", "/nowhere", "/health/detailed")


Served = list[tuple[float, str, int]]
Printed = list[tuple[float, dict[str, Any]]]


def serve(paths: tuple[str, ...], times: list[float]) -> tuple[Served, Printed]:
    """Invoke the health handler at the simulated `times`, then flush; returns (time, path,
    status) per invocation and, per EMF document, (the time it was printed at, doc)."""
    handler = function_handler("health")
    served: Served = []
    printed: list[tuple[float, dict[str, Any]]] = []
    with EmfClock() as clock:
        for i, t in enumerate(times):
            clock.t = t
            path = paths[i % len(paths)]
            out = io.StringIO()
            with redirect_stdout(out):
                status, _, _ = call_api(handler, path)
            served.append((clock.time(), path, status))
            printed += [(clock.time(), doc) for doc in emf_lines(out.getvalue())]
        out = io.StringIO()
        with redirect_stdout(out):
            flush()  # a forced flush prints the open window (stored or not)
        printed += [(clock.time(), doc) for doc in emf_lines(out.getvalue())]
    return served, printed


def dimension_set(doc: dict[str, Any]) -> tuple[str, ...]:
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    (dims,) = directive["Dimensions"]
    return tuple(f"{d}={doc[d]}" for d in dims)


def total(docs: list[dict[str, Any]], name: str, **dims: str) -> float:
    return sum(
        sum(doc[name])
        for doc in docs
        if name in doc and all(doc.get(k) == v for k, v in dims.items())
    )


@pytest.mark.parametrize("interval", [1, 10])
def test_one_document_per_dimension_set_per_window_and_exact_sums(
    db_env: str, app_env: AppEnv, interval: int
) -> None:
    app_env(METRICS_FLUSH_INTERVAL_S=str(interval))
    served, printed = serve(MIXED, [i / 10 for i in range(400)])  # 10/s for 40 s
    docs = [doc for _, doc in printed]
    windows: dict[int, list[tuple[str, ...]]] = defaultdict(list)
    for doc in docs:
        windows[doc["_aws"]["Timestamp"]].append(dimension_set(doc))
    for stamp, sets in windows.items():
        assert len(sets) == len(set(sets)), (stamp, sets)  # one document per set per window
    # Per window, fewer documents than invocations by the interval's factor (about).
    assert len(windows) <= 40 / interval + 3, sorted(windows)
    for name, routes in (
        ("health_probe_requests", MIXED[:3] + MIXED[4:]),
        ("http_requests", MIXED[3:4]),
    ):
        expected = Counter(f"{status // 100}xx" for _, path, status in served if path in routes)
        assert expected and all(
            total(docs, name, status_class=status_class) == n
            for status_class, n in expected.items()
        ), (name, expected)
    durations = [v for doc in docs for v in doc.get("http_request_duration_seconds", [])]
    assert len(durations) == 400  # the latency alarm's SampleCount: every request


def test_every_value_is_stamped_in_its_window_and_minute(db_env: str, app_env: AppEnv) -> None:
    """A window's Timestamp is its first invocation's time, its values are those served
    from then to the next window, and it never spans two UTC minutes."""
    app_env(METRICS_FLUSH_INTERVAL_S="10")
    times = [i / 7 for i in range(7 * 150)]  # 150 s at 7/s: windows cross minutes
    served, printed = serve(("/health/live",), times)
    stamps = sorted({doc["_aws"]["Timestamp"] for _, doc in printed})
    served_ms = [int(t * 1000) for t, _, _ in served]
    assert set(stamps) <= set(served_ms)
    bounds = [*stamps, float("inf")]
    for start, end in itertools.pairwise(bounds):
        in_window = [t for t in served_ms if start <= t < end]
        docs = [doc for _, doc in printed if doc["_aws"]["Timestamp"] == start]
        assert total(docs, "health_probe_requests") == len(in_window)
        assert in_window[-1] // 60_000 == start // 60_000  # one UTC minute
    assert len(stamps) < len(times) / 50


@pytest.mark.parametrize(
    ("interval", "spacing"), [(10, 0.5), (10, 3.0), (10, 9.0), (10, 25.0), (600, 3.0)]
)
def test_no_document_waits_past_the_interval_while_traffic_comes(
    app_env: AppEnv, closed_port: int, interval: int, spacing: float
) -> None:
    """Probe-only, the database down: each failure reaches stdout within the interval of
    when it happened (at a steady spacing), and within its minute plus one spacing
    whatever the interval, so the DatabaseDown alarm's minutes see it."""
    app_env(
        METRICS_FLUSH_INTERVAL_S=str(interval),
        DATABASE_URL=f"postgresql://u:p@127.0.0.1:{closed_port}/db",
        HEALTH_DB_TIMEOUT_S="0.5",
    )
    times = [i * spacing for i in range(int(150 / spacing))]
    served, printed = serve(("/health",), times)
    assert {status for _, _, status in served} == {503}
    for printed_at, doc in printed[:-1]:  # the last: the forced flush at the end
        stamp = doc["_aws"]["Timestamp"] / 1000
        assert printed_at - stamp <= interval, (printed_at, doc)
        assert printed_at < (stamp // 60 + 1) * 60 + spacing, (printed_at, doc)
    docs = [doc for _, doc in printed]
    assert total(docs, "health_check_failures", check="database") == len(served)
    if spacing >= interval:  # sparse: every invocation prints at once, as before
        assert len({doc["_aws"]["Timestamp"] for doc in docs}) == len(served)


def test_interval_0_prints_every_invocation(db_env: str) -> None:
    served, printed = serve(("/health/live",), [i / 10 for i in range(20)])
    assert [t for t, _, _ in served] == sorted({t for t, _ in printed})
