"""Dependency checks, each bounded by its own time budget (health routes and /metrics).

A check runs on a pooled worker thread (ops.concurrency.BoundedCall) that the request
waits on for at most the budget: its configured one, shrunk to end ANSWER_MARGIN_S
before the invocation's deadline (ops.deadline), so that the answer, a 503 if need
be, always leaves before Lambda times the invocation out. A database that accepts
and never answers therefore becomes a failed check (and a 503, or `database_up 0` on /metrics) on
time, and its connection is dropped so that the next invocation starts fresh
instead of queueing behind the hung read.

A failed check says why in a fixed vocabulary (`reason`: timeout, refused,
auth_failed, error), which is all an unauthenticated caller sees. The
driver's message (target, SQLSTATE, file, line) goes to the log, and to
`/health/detailed` when that route is behind a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ops import deadline, tracing
from ops.concurrency import BoundedCall, ChainedCall
from ops.config import settings
from ops.log import logger
from ops.sql import sqlstate

# Time kept after the checks for the rest of the invocation: the response, its log line,
# the metrics hooks (a background flush), and the runtime client posting it.
ANSWER_MARGIN_S = 0.05
MIN_BUDGET_S = 0.001


def fitted_budget(budget_s: float) -> float:
    """`budget_s`, or less: what is left of the invocation minus ANSWER_MARGIN_S."""
    left = deadline.remaining_s()
    if left is None:
        return budget_s
    return max(MIN_BUDGET_S, min(budget_s, left - ANSWER_MARGIN_S))


class RoundTrip(Protocol):
    """Work that rides on the database check's round trip (ops.wiring wires in the
    metrics flush): no extra write per probe."""

    def carry(self, budget_s: float) -> bool:
        """True when it made the check's round trip (the database answered); False when
        it did not (the check sends its own `SELECT 1`). Raises when no answer came."""
        ...

    def abandon(self) -> bool:
        """The check gave up: drop the connection it waits on; False when it had none."""
        ...


class Reason(StrEnum):
    """Why a check failed, in the fixed vocabulary every caller may see."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    AUTH_FAILED = "auth_failed"
    ERROR = "error"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    critical: bool
    error: str | None = None  # details: logs and authenticated callers only
    component_type: str = "component"
    reason: Reason | None = None  # when not ok

    @property
    def latency_seconds(self) -> float:
        """The latency in the metrics' base unit (the health bodies and logs keep ms)."""
        return self.latency_ms / 1000.0

    def as_json(self, *, details: bool = False) -> dict[str, object]:
        body: dict[str, object] = {"status": "up" if self.ok else "down"}
        if not self.ok:
            body["reason"] = self.reason or Reason.ERROR
        body["latencyMs"] = round(self.latency_ms, 3)
        if details and self.error:
            body["error"] = self.error
        return body


def failure_reason(exc: BaseException) -> Reason:
    """timeout, refused, auth_failed or error, from the exception and what caused it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return Reason.TIMEOUT
        if isinstance(current, ConnectionRefusedError):
            return Reason.REFUSED
        # SQLSTATE class 28: invalid authorization; HTTP 401/403 from a dependency.
        if sqlstate(current).startswith("28") or getattr(current, "code", None) in (401, 403):
            return Reason.AUTH_FAILED
        current = current.__cause__ or current.__context__
    return Reason.ERROR


@dataclass(frozen=True)
class Check:
    name: str
    probe: Callable[[float], None]  # raises on failure; receives its budget in seconds
    budget_s: float
    critical: bool
    component_type: str
    on_timeout: Callable[[], None] | None = None


class _RunningCheck:
    """One check on its worker (a BoundedCall), then what is chained to it if it passed."""

    def __init__(self, check: Check, then: ChainedCall | None = None) -> None:
        self.check = check
        self.budget_s = fitted_budget(check.budget_s)
        self.then = then
        self.probe_exc: BaseException | None = None
        self.probed_at: float | None = None
        self.given_up = False
        self.run = BoundedCall(self._probe_then)
        if then is not None:
            then.chain_to(self.run)

    def _probe_then(self) -> Any:
        try:
            self.check.probe(self.budget_s)
        except BaseException as exc:
            self.probe_exc = exc
            return None
        finally:
            self.probed_at = time.perf_counter()
        if self.then is None or self.given_up:
            return None
        return self.then.fn()

    def result(self) -> CheckResult:
        check, run = self.check, self.run
        run.wait(self.budget_s)  # at the end of the follow-up too, if the budget allows
        probed_at = self.probed_at
        if probed_at is None:
            self.given_up = True
            if check.on_timeout is not None:
                check.on_timeout()
            return CheckResult(
                check.name,
                False,
                (time.perf_counter() - run.started_at) * 1000.0,
                check.critical,
                f"timed out after {self.budget_s:.3g}s",
                check.component_type,
                Reason.TIMEOUT,
            )
        exc = self.probe_exc
        error = None if exc is None else (str(exc) or type(exc).__name__)
        return CheckResult(
            check.name,
            error is None,
            (probed_at - run.started_at) * 1000.0,
            check.critical,
            error,
            check.component_type,
            None if exc is None else failure_reason(exc),
        )


ResultHook = Callable[[CheckResult], None]


class _Hooks:
    """What ops.wiring wires in where it wires the router's hooks: the round trip the
    database check carries, and what is done with each result (the metrics); the checks
    know nothing of either."""

    round_trip: RoundTrip | None = None
    on_result: tuple[ResultHook, ...] = ()


hooks = _Hooks()


def wire(*, round_trip: RoundTrip | None, on_result: tuple[ResultHook, ...]) -> None:
    """Replace the hooks (ops.wiring.service_api; once per function, at init)."""
    hooks.round_trip = round_trip
    hooks.on_result = on_result


def run_checks(checks: list[Check], then: ChainedCall | None = None) -> list[CheckResult]:
    """Run all checks concurrently; the slowest bounds the total, not the sum.

    `then` runs on the first check's worker once that check has passed, not when it failed
    or was given up on (ops.concurrency.ChainedCall).
    Each result goes to the result hooks (ops.wiring records it: `health_check_failures_total`,
    also CloudWatch's `health_check_failures`, and `health_check_duration_seconds`) and a
    failure is logged.
    """
    running = [_RunningCheck(check, then if i == 0 else None) for i, check in enumerate(checks)]
    results = [r.result() for r in running]
    for r, result in zip(running, results, strict=True):
        tracing.record(
            f"check {result.name}",
            r.run.started_at,
            r.run.started_at + result.latency_seconds,
            check=result.name,
            outcome="up" if result.ok else "down",
            reason=result.reason,
            critical=result.critical,
        )
        for hook in hooks.on_result:
            hook(result)
        if not result.ok:
            logger.warning(
                "health check failed",
                extra={
                    "type": "health_check",
                    "check": result.name,
                    "status": "down",
                    "reason": result.reason,
                    "latencyMs": round(result.latency_ms, 3),
                    "error": result.error,
                },
            )
    return results


def _probe_database(budget_s: float) -> None:
    """The due metrics flush in the same round trip (the hook), or `SELECT 1` on the
    checks' own connection, so that a check never waits behind a flush."""
    from ops.db import get_db  # the database driver loads on the first probe (cold start)

    round_trip = hooks.round_trip
    if round_trip is not None and round_trip.carry(budget_s):
        return
    get_db().run("SELECT 1", timeout_s=budget_s)


def _abandon_database_probe() -> None:
    """Drop the connection the probe waits on: the next invocation starts afresh."""
    from ops.db import get_db

    round_trip = hooks.round_trip
    if round_trip is None or not round_trip.abandon():
        get_db().discard()


def _probe_http(url: str) -> Callable[[float], None]:
    def probe(budget_s: float) -> None:
        import urllib.request  # only functions with an HTTP dependency pay for this import

        with urllib.request.urlopen(url, timeout=budget_s) as resp:
            if resp.status >= 400:
                raise RuntimeError(f"HTTP {resp.status}")

    return probe


def database_check() -> Check:
    return Check(
        "database",
        _probe_database,
        settings().health_db_budget_s,
        critical=True,
        component_type="datastore",
        on_timeout=_abandon_database_probe,
    )


def configured_checks() -> list[Check]:
    """Every check this deployment has: the database first, then optional HTTP dependencies."""
    cfg = settings()
    checks = [database_check()]
    if cfg.moltbot_gateway_url:
        checks.append(
            Check(
                "moltbot",
                _probe_http(f"{cfg.moltbot_gateway_url}/health"),
                cfg.health_http_budget_s,
                critical=False,
                component_type="http",
            )
        )
    return checks
