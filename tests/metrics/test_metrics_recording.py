"""The recording API, exposition rendering, content negotiation and the EMF mirror,
without a database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from ops.metrics import catalogue as m
from ops.metrics import current, families, flush
from ops.metrics.emf import Emf, EmfKey
from ops.metrics.exposition import render, wants_openmetrics
from ops.metrics.families import Counter, Family, Gauge, Histogram
from ops.metrics.pending import SeriesKey
from ops.metrics.text_format import format_bound, format_value
from ops.metrics.totals import TotalRow, Totals
from tests.support.metrics import emf_lines, parse, value
from tools import PYTHONPATH, ROOT

CHILD_ENV = {**os.environ, "PYTHONPATH": PYTHONPATH}  # the layer and the functions

# -- labels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: m.WEBHOOK_FAILURES.labels(sorce="stripe"), "unknown ['sorce']"),
        (lambda: m.TOOL_CALLS.labels(tool="search"), "missing ['status']"),
        (lambda: m.TOOL_CALLS.labels("search"), "expected 2 label values"),
        (lambda: m.TOOL_CALLS.labels("search", status="ok"), "not both"),
        (lambda: m.WEBHOOK_FAILURES.labels(source=""), "1 to 128 characters"),
        (lambda: m.WEBHOOK_FAILURES.labels(source="x" * 129), "1 to 128 characters"),
        (lambda: m.WEBHOOK_FAILURES.labels(source="a\x00b"), "NUL"),
        (lambda: m.WEBHOOK_FAILURES.labels(source="a\ud800b"), "not UTF-8"),
        (lambda: m.WEBHOOK_FAILURES.labels(source=1.5), "must be a string"),
        (lambda: m.WEBHOOK_FAILURES.labels(source=True), "must be a string"),
        (lambda: m.WEBHOOK_FAILURES.labels(source=["stripe"]), "must be a string"),
        (lambda: m.RETENTION_RUNS.labels(status="maybe"), "must be one of ['failed', 'succeeded']"),
        (lambda: m.WEBHOOK_FAILURES.inc(), "use .labels(...)"),
        (lambda: m.RETENTION_RUN_DURATION.labels(table="x"), "unknown ['table']"),
    ],
)
def test_label_mistakes_raise_at_record_time(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: m.WEBHOOK_FAILURES.labels(source="s").inc(-1), "only go up"),
        (lambda: m.WEBHOOK_FAILURES.labels(source="s").inc(float("nan")), "finite"),
        (lambda: m.TOOL_CALL_DURATION.labels(tool="t").observe(float("inf")), "finite"),
        (lambda: m.RETENTION_MISSING_INDEX.labels(table="t").set(float("nan")), "finite"),
    ],
)
def test_bad_values_raise(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
    assert not current().pending.take_deltas()


def test_children_are_cached_and_int_values_accepted() -> None:
    by_name = m.HTTP_REQUESTS.labels(method="GET", route="/x", status=200)
    assert m.HTTP_REQUESTS.labels(method="GET", route="/x", status=200) is by_name
    by_position = m.HTTP_REQUESTS.labels("GET", "/x", "200")
    by_position.inc()
    by_name.inc(2)
    deltas = current().pending.take_deltas()
    assert deltas.sums == {("http_requests_total", 'method="GET",route="/x",status="200"', ""): 3.0}


def test_a_family_is_defined_once() -> None:
    with pytest.raises(ValueError, match="already defined"):
        Counter("webhook_failures_total", "again", ("source",))
    with pytest.raises(ValueError, match="must end in _total"):
        Counter("things", "x", registry={})
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h_seconds", "x", buckets=(5, 1), registry={})
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h_seconds", "x", ("le",), buckets=(1,), registry={})


def test_histogram_buckets_are_upper_inclusive() -> None:
    child = m.TOOL_CALL_DURATION.labels(tool="search")
    for seconds in (0.05, 0.050001, 5.0, 5.0005, 0.0):
        child.observe(seconds)
    sums = current().pending.take_deltas().sums
    labels = 'tool="search"'
    assert sums == {
        ("tool_call_duration_seconds", labels, "0.05"): 2.0,  # 0.0 and exactly 0.05
        ("tool_call_duration_seconds", labels, "0.1"): 1.0,
        ("tool_call_duration_seconds", labels, "5.0"): 1.0,
        ("tool_call_duration_seconds", labels, "+Inf"): 1.0,
        ("tool_call_duration_seconds", labels, "sum"): pytest.approx(0.05 + 0.050001 + 5 + 5.0005),
    }


def test_http_duration_resolves_fast_routes_and_keeps_the_objective_bounds() -> None:
    # Health routes answer in about 1 ms: they need bounds below the seed's first (10 ms).
    child = m.HTTP_REQUEST_DURATION.labels(method="GET", route="/health/live")
    for seconds in (0.0004, 0.002, 0.004, 0.007):
        child.observe(seconds)
    sums = current().pending.take_deltas().sums
    labels = 'method="GET",route="/health/live"'
    assert {le: n for (_, lab, le), n in sums.items() if lab == labels and le != "sum"} == {
        "0.001": 1.0,
        "0.0025": 1.0,
        "0.005": 1.0,
        "0.01": 1.0,
    }
    # The seed's bounds (10 ms to 5 s) stay: dashboards, the 500 ms objective and the SLO
    # rules read them.
    assert {0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5} <= set(m.HTTP_BUCKETS)


def test_time_observes_seconds() -> None:
    with m.TOOL_CALL_DURATION.labels(tool="t").time():
        time.sleep(0.06)
    with m.RETENTION_RUN_DURATION.time():
        pass
    sums = current().pending.take_deltas().sums
    # At least the 60 ms slept, in seconds (in ms it would read 60 or more).
    assert 0.06 <= sums[SeriesKey("tool_call_duration_seconds", 'tool="t"', "sum")] < 30
    # Far less than the first bucket (1 s): one observation there.
    assert sums[SeriesKey("retention_run_duration_seconds", "", "1.0")] == 1.0


def test_gauge_keeps_the_last_value() -> None:
    missing = m.RETENTION_MISSING_INDEX.labels(table="events")
    missing.set(1)
    missing.set(0)
    ((key, (reading, _)),) = current().pending.take_deltas().gauges.items()
    assert key == ("retention_missing_index", 'table="events"', "") and reading == 0.0


def test_bucket_bounds_render_as_prometheus_clients_do() -> None:
    assert [format_bound(b) for b in (0.005, 1, 2.5, 10, 5000, 1e6, float("inf"))] == [
        "0.005",
        "1.0",
        "2.5",
        "10.0",
        "5000.0",
        "1e+06",
        "+Inf",
    ]


def test_recording_imports_no_prometheus_client_or_boto3() -> None:
    code = (
        "import sys\n"
        "from ops.metrics import catalogue as m\n"
        "import ops.metrics.router_hooks\n"
        "m.TOOL_CALLS.labels(tool='t', status='ok').inc()\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('prometheus_client', 'boto3')]\n"
        "assert not bad, bad\n"
        "assert 'pg8000' not in sys.modules and 'ops.metrics.store' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=CHILD_ENV, check=True)


def test_catalogue_import_costs_only_the_standard_library() -> None:
    """What every function imports to record (the package docstring's promise): emf.py,
    which the catalogue imports for `Emf`, leaves ops.log (Powertools) to its first line."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from ops.metrics import catalogue\n"
        "loaded = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "assert loaded <= set(sys.stdlib_module_names) | {'ops'}, sorted(loaded)\n"
        "assert 'ops.log' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=CHILD_ENV, check=True)


def test_no_metrics_module_shadows_the_package_functions() -> None:
    """Importing a submodule sets the package attribute of its name: a module named
    `flush` would replace `ops.metrics.flush()` once anything imported it."""
    import pkgutil

    import ops.metrics

    public = {name for name in vars(ops.metrics) if callable(getattr(ops.metrics, name))}
    modules = {info.name for info in pkgutil.iter_modules(ops.metrics.__path__)}
    assert {"flush", "install_shutdown_flush", "reset"} <= public
    assert not public & modules


# -- rendering ----------------------------------------------------------------------------


def _families() -> tuple[Counter, Histogram, Gauge]:
    registry: dict[str, Family[Any]] = {}
    counter = Counter(
        "t_requests_total", 'Requests "with" a \\ and\nnewline.', ("path",), registry=registry
    )
    hist = Histogram(
        "t_duration_seconds", "Duration.", ("path",), buckets=(10, 100), registry=registry
    )
    gauge = Gauge("t_up", "Up.", ("path",), registry=registry)
    return counter, hist, gauge


NASTY = 'a "quoted" \\ back\nslash'


def _totals() -> Totals:
    from ops.metrics.text_format import format_labels

    nasty = format_labels(("path",), (NASTY,))
    return {
        "t_requests_total": [TotalRow(nasty, {"": 3.0}), TotalRow('path="/b"', {"": 1.5})],
        # "50.0" is a bound the catalogue no longer has: it folds into le="100.0".
        "t_duration_seconds": [
            TotalRow(nasty, {"10.0": 1.0, "50.0": 2.0, "+Inf": 1.0, "sum": 1234.5})
        ],
        "t_up": [TotalRow(nasty, {"": 1.0})],
    }


@pytest.mark.parametrize("openmetrics", [False, True])
def test_render_parses_back_with_exact_values(openmetrics: bool) -> None:
    text = render(_totals(), {}, openmetrics=openmetrics, families=_families())
    samples = parse(text, openmetrics=openmetrics)
    assert value(samples, "t_requests_total", path=NASTY) == 3.0
    assert value(samples, "t_requests_total", path="/b") == 1.5
    assert value(samples, "t_duration_seconds_bucket", path=NASTY, le="10.0") == 1.0
    assert value(samples, "t_duration_seconds_bucket", path=NASTY, le="100.0") == 3.0
    assert value(samples, "t_duration_seconds_bucket", path=NASTY, le="+Inf") == 4.0
    assert value(samples, "t_duration_seconds_count", path=NASTY) == 4.0
    assert value(samples, "t_duration_seconds_sum", path=NASTY) == 1234.5
    assert value(samples, "t_up", path=NASTY) == 1.0
    assert text.endswith("# EOF\n") == openmetrics


def test_openmetrics_names_counter_families_without_total() -> None:
    counter, _, _ = _families()
    text = render(_totals(), {}, openmetrics=True, families=[counter])
    assert "# TYPE t_requests counter\n" in text
    assert '# HELP t_requests Requests \\"with\\" a \\\\ and\\nnewline.\n' in text
    text = render(_totals(), {}, openmetrics=False, families=[counter])
    assert "# TYPE t_requests_total counter\n" in text
    assert '# HELP t_requests_total Requests "with" a \\\\ and\\nnewline.\n' in text


def test_every_catalogue_family_has_help_and_type_even_without_samples() -> None:
    text = render({}, {}, openmetrics=False)
    for family in families.REGISTRY.values():
        assert f"# HELP {family.name} " in text
        assert f"# TYPE {family.name} {family.kind}\n" in text
    samples = parse(text)
    # Unlabelled families start from zero, so that the first increase is seen.
    assert value(samples, "retention_run_duration_seconds_count") == 0.0
    assert value(samples, "retention_run_duration_seconds_bucket", le="+Inf") == 0.0
    assert not any(name.startswith("http_requests") for name, _ in samples)


def test_live_gauges_are_rendered_from_their_readings() -> None:
    live = {
        "active_sessions": [("", 7.0)],
        "db_connections": [(m.DB_CONNECTIONS.labels(state="idle in transaction"), 2.0)],
    }
    samples = parse(render({}, live, openmetrics=True), openmetrics=True)
    assert value(samples, "active_sessions") == 7.0
    assert value(samples, "db_connections", state="idle in transaction") == 2.0


@pytest.mark.parametrize(
    ("number", "text"),
    [(3.0, "3"), (0.1, "0.1"), (1e16, "1e+16"), (-2.0, "-2"), (float("inf"), "+Inf")],
)
def test_values(number: float, text: str) -> None:
    assert format_value(number) == text


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        # Prometheus 2.x
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", False),
        ("application/openmetrics-text;version=0.0.1", False),
        ("application/openmetrics-text;q=0", False),
        # Quoted parameter values, whitespace and case (RFC 9110 media types)
        ('application/openmetrics-text; version="1.0.0"', True),
        ('Application/OpenMetrics-Text; Version="1.0.0"; Charset="UTF-8"', True),
        ("APPLICATION/OPENMETRICS-TEXT;VERSION=1.0.0;Q=1", True),
        ("application/openmetrics-text ;version=1.0.0 ; q=0.9 , text/plain ; q=0.5", True),
        ('application/openmetrics-text; version="0.0.1"', False),
        ('application/openmetrics-text; version="1.0.0"; Q=0', False),
        (
            'text/plain; version="0.0.4", application/openmetrics-text; version="1.0.0"; q=0.9',
            False,
        ),
        # A quoted value may hold the separators: neither ends the parameter or the range.
        ('application/openmetrics-text; x="a,b;c"; version="1.0.0"', True),
        ('application/openmetrics-text; x="a\\"b,c"; version=1.0.0', True),
        ('text/plain; x="q=1, application/openmetrics-text"', False),
        ('application/openmetrics-text; q=0.5; x="a, */*;z="', True),
    ],
)
def test_content_negotiation(accept: str | None, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


# -- the CloudWatch mirror ----------------------------------------------------------------


def test_flush_without_a_database_still_emits_emf_and_keeps_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    m.HTTP_REQUESTS.labels(method="GET", route="/a", status="200").inc()
    m.HTTP_REQUESTS.labels(method="GET", route="/b", status="201").inc()
    m.HTTP_REQUESTS.labels(method="GET", route="/a", status="503").inc()
    m.HTTP_REQUESTS.labels(method="GET", route="/health/ready", status="503").inc(2)  # a probe
    m.HTTP_REQUEST_DURATION.labels(method="GET", route="/a").observe(0.0125)
    m.HTTP_REQUEST_DURATION.labels(method="GET", route="/b").observe(0.04)
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    m.HEALTH_CHECK_FAILURES.labels(check="database").inc()
    m.HEALTH_CHECK_FAILURES.labels(check="moltbot").inc(0)  # a check that passed
    m.RETENTION_ROWS_DELETED.labels(table="inbound_events").inc(500)
    m.RETENTION_RUNS.labels(status="failed").inc()
    m.ERRORS.labels(function="f", kind="unhandled_exception").inc()  # not mirrored

    assert flush() is True  # no database configured: nothing to keep
    assert not current().pending.take_deltas()
    lines = emf_lines(capsys.readouterr().out)
    by_dims = {}
    for line in lines:
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Test"
        assert line["service"] == "realestate-backend"
        (dims,) = directive["Dimensions"]
        extra = tuple(sorted((d, line[d]) for d in dims if d != "service"))
        assert "service" in dims
        units = {d["Name"]: d["Unit"] for d in directive["Metrics"]}
        by_dims[extra] = {name: (units[name], line[name]) for name in units}
    assert by_dims == {
        (): {
            "http_request_duration_seconds": ("Seconds", [0.0125, 0.04]),
            "tool_calls": ("Count", [1.0]),
            "retention_runs_failed": ("Count", [1.0]),
        },
        (("status_class", "2xx"),): {"http_requests": ("Count", [2.0])},
        (("status_class", "5xx"),): {
            "http_requests": ("Count", [1.0]),
            "health_probe_requests": ("Count", [2.0]),  # not an API error
        },
        (("check", "database"),): {"health_check_failures": ("Count", [1.0])},
        (("check", "moltbot"),): {"health_check_failures": ("Count", [0.0])},
        (("table", "inbound_events"),): {"retention_rows_deleted": ("Count", [500.0])},
    }
    assert flush() is True
    assert emf_lines(capsys.readouterr().out) == []  # emitted once, then forgotten


def test_emf_lines_keep_to_100_values_per_metric(capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(250):
        m.HTTP_REQUEST_DURATION.labels(method="GET", route="/a").observe(float(i))
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    assert flush() is True
    lines = [line for line in emf_lines(capsys.readouterr().out) if "status_class" not in line]
    durations = [line.get("http_request_duration_seconds") for line in lines]
    assert [len(d) for d in durations if d] == [100, 100, 50]
    assert [v for d in durations if d for v in d] == [float(i) for i in range(250)]
    assert sum(line.get("tool_calls", [0.0])[0] for line in lines) == 1.0
    for line in lines:  # each line declares exactly the metrics it carries
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        declared = {d["Name"] for d in directive["Metrics"]}
        assert declared == {k for k in line if k not in ("_aws", "service")}


def test_no_namespace_no_emf(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE")
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    assert flush() is True
    assert emf_lines(capsys.readouterr().out) == []


def test_every_probe_route_counts_as_a_probe_in_cloudwatch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The availability SLO's alarms read `http_requests`: no probe or scrape may be in it."""
    for route in m.PROBE_ROUTES:
        m.HTTP_REQUESTS.labels(method="GET", route=route, status="200").inc()
    m.HTTP_REQUESTS.labels(method="GET", route="unmatched", status="404").inc()
    m.HTTP_REQUESTS.labels(method="GET", route="/healthz", status="200").inc()  # not a probe
    assert flush() is True
    emitted = {
        (name, line["status_class"], tuple(line[name]))
        for line in emf_lines(capsys.readouterr().out)
        for name in ("http_requests", "health_probe_requests")
        if name in line
    }
    assert emitted == {
        ("health_probe_requests", "2xx", (float(len(m.PROBE_ROUTES)),)),
        ("http_requests", "2xx", (1.0,)),
        ("http_requests", "4xx", (1.0,)),
    }


def test_emf_name_template_uses_a_closed_label_set() -> None:
    emf = Emf("retention_runs_{status}", "Count")
    assert emf.key({"status": "succeeded"})[:4] == ("retention_runs_succeeded", "Count", "", "")


def _powertools_lines(
    recorded: dict[EmfKey, list[float]], namespace: str | None, service: str
) -> list[str]:
    """What Powertools Metrics prints for the same recordings (the reference format)."""
    import contextlib
    import io

    from aws_lambda_powertools.metrics import EphemeralMetrics

    groups: dict[tuple[str, str], list[tuple[str, str, list[float]]]] = {}
    # Histograms after counters, as emf.py adds them (a 100-value split carries the rest).
    for key, values in sorted(recorded.items(), key=lambda item: item[0].observations):
        groups.setdefault((key.dimension, key.value), []).append((key.name, key.unit, values))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for (dim_name, dim_value), metrics in sorted(groups.items()):
            line = EphemeralMetrics(namespace=namespace, service=service)
            line.set_default_dimensions(
                service=service, **({dim_name: dim_value} if dim_name else {})
            )
            for name, unit, values in metrics:
                for value in values:
                    line.add_metric(name=name, unit=unit, value=value)
            line.flush_metrics()
    return out.getvalue().splitlines()


def _canonical(lines: list[str]) -> list[str]:
    parsed = [json.loads(line) for line in lines]
    for line in parsed:
        line["_aws"]["Timestamp"] = 0
    return sorted(json.dumps(line, sort_keys=True) for line in parsed)


@pytest.mark.parametrize("observations", [3, 250])
def test_emf_lines_are_the_ones_powertools_metrics_prints(
    capsys: pytest.CaptureFixture[str], observations: int
) -> None:
    """emf.py writes the lines itself (a quarter of Powertools' cost a line); they must
    stay exactly the lines Powertools Metrics would print for the same recordings."""
    from ops.config import settings
    from ops.metrics import emf

    for i in range(observations):
        m.HTTP_REQUEST_DURATION.labels(method="GET", route="/a").observe(float(i))
    m.HTTP_REQUESTS.labels(method="GET", route="/a", status="503").inc(2)
    m.TOOL_CALLS.labels(tool="search", status="ok").inc()
    m.TOOL_CALL_DURATION.labels(tool="search").observe(0.0125)
    recorded = current().pending.take_emf()
    assert recorded
    capsys.readouterr()
    emf.emit(recorded)
    ours = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    cfg = settings()
    reference = _powertools_lines(recorded, cfg.metrics_namespace, cfg.service)
    assert len(ours) > 1
    assert _canonical(ours) == _canonical(reference)
