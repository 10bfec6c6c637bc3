"""The layer's threads (ops.concurrency): checks run on reused worker threads, none
leaked, none queued behind a hung one; the scrape's store read runs after the database
check on the check's worker; a SerialThread runs jobs in order on one thread; a
MailboxThread hands over messages and wakes at the time its handler names."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ops import concurrency
from ops.checks import Check, Reason, run_checks
from ops.concurrency import ChainedCall
from tests.support.metrics import parse, scrape, value
from tests.support.runtime import FunctionInvoker


def _check(probe: Callable[[float], None], budget_s: float = 5.0, name: str = "dep") -> Check:
    return Check(name, probe, budget_s, critical=True, component_type="component")


def _ok(_: float) -> None:
    pass


def test_threads_are_reused_not_started_per_check(db_env: str, health_api: FunctionInvoker) -> None:
    for _ in range(3):
        assert health_api("/health")[0] == 200
    before = set(threading.enumerate())
    for path in ("/health", "/health/ready", "/health/detailed") * 40:
        assert health_api(path)[0] == 200
    assert set(threading.enumerate()) - before == set()  # (an earlier test's may have ended)
    assert concurrency.idle_workers() >= 1


def test_one_idle_worker_runs_check_after_check(app_env: Callable[..., None]) -> None:
    app_env()
    ran_on: list[threading.Thread] = []
    for _ in range(20):
        (result,) = run_checks([_check(lambda _: ran_on.append(threading.current_thread()))])
        assert result.ok
    assert len(set(ran_on)) == 1


def test_many_concurrent_checks_leave_at_most_the_idle_workers(
    app_env: Callable[..., None],
) -> None:
    app_env()
    before = threading.active_count()
    release = threading.Event()

    def hangs(_: float) -> None:
        release.wait()

    results = run_checks([_check(hangs, budget_s=0.05) for _ in range(10)])
    assert [r.reason for r in results] == [Reason.TIMEOUT] * 10
    release.set()
    deadline = time.monotonic() + 10
    while (
        threading.active_count() > before + concurrency.MAX_IDLE_WORKERS
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert threading.active_count() <= before + concurrency.MAX_IDLE_WORKERS


def test_a_worker_stuck_on_a_hung_check_does_not_delay_the_next_check(
    app_env: Callable[..., None], log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    app_env()
    hung = threading.Event()
    release = threading.Event()

    def hangs(_: float) -> None:
        hung.set()
        release.wait()

    try:
        (first,) = run_checks([_check(hangs, budget_s=0.2, name="hung")])
        assert first.reason == Reason.TIMEOUT and hung.is_set()
        # Every idle worker is now taken in turn while the hung one still holds its own.
        for _ in range(concurrency.MAX_IDLE_WORKERS + 2):
            started = time.monotonic()
            (second,) = run_checks([_check(_ok, budget_s=5.0, name="next")])
            assert second.ok, second
            assert time.monotonic() - started < 2.5  # far from the 5 s budget: not queued
    finally:
        release.set()


def test_a_follow_up_runs_after_the_check_on_its_worker(app_env: Callable[..., None]) -> None:
    app_env()
    seen: dict[str, object] = {}

    def probe(_: float) -> None:
        seen["probe"] = threading.current_thread()

    def follow() -> str:
        seen["follow"] = threading.current_thread()
        return "read"

    then = ChainedCall(follow)
    (result,) = run_checks([_check(probe)], then=then)
    assert result.ok
    assert then.wait(5.0) and then.value == "read" and then.exc is None
    assert seen["probe"] is seen["follow"] is not threading.current_thread()


@pytest.mark.parametrize("how", ["fails", "times out"])
def test_a_follow_up_never_runs_after_a_failed_or_abandoned_check(
    app_env: Callable[..., None], how: str
) -> None:
    app_env()
    ran = threading.Event()
    release = threading.Event()

    def probe(_: float) -> None:
        if how == "fails":
            raise ConnectionRefusedError("refused")
        release.wait()

    then = ChainedCall(ran.set)
    (result,) = run_checks([_check(probe, budget_s=0.1)], then=then)
    assert not result.ok
    assert result.reason == (Reason.REFUSED if how == "fails" else Reason.TIMEOUT)
    release.set()  # the abandoned probe returns now: its follow-up must not start
    assert then.wait(5.0)  # the worker's task (probe, then follow-up or not) has ended
    assert not ran.is_set()


def test_a_forked_child_starts_its_own_workers(app_env: Callable[..., None]) -> None:
    app_env()
    assert run_checks([_check(_ok)])[0].ok  # the parent has an idle worker now
    assert concurrency.idle_workers() >= 1
    pid = os.fork()
    if pid == 0:  # the child has none of the parent's threads: a worker must start afresh
        done = threading.Event()
        concurrency.run_on_worker(lambda: None, done.set)
        os._exit(0 if done.wait(10) else 1)
    deadline = time.monotonic() + 60
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if ended[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child never ran its task")
    assert os.waitstatus_to_exitcode(ended[1]) == 0


def test_the_database_check_latency_is_the_probe_not_the_read(
    db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    from metrics import live_gauges

    live_sql = live_gauges.STAT_DATABASE_SQL
    slow = f"SELECT live.* FROM ({live_sql}) AS live CROSS JOIN (SELECT pg_sleep(1)) AS slept"
    monkeypatch.setattr(live_gauges, "STAT_DATABASE_SQL", slow)
    status, _, body = scrape()
    assert status == 200
    samples = parse(body)
    assert value(samples, "database_up") == 1
    assert value(samples, "health_check_status", check="database") == 1
    assert value(samples, "pg_stat_database_deadlocks_total") >= 0  # slept, and was read
    # The read after it slept 1 s on the same worker; the check's latency is its own.
    assert value(samples, "health_check_latency_seconds", check="database") < 1.0


def test_a_serial_thread_runs_jobs_in_order_on_one_thread() -> None:
    serial = concurrency.SerialThread("test-serial")
    ran: list[tuple[int, threading.Thread]] = []
    done = threading.Event()

    class Job:
        def __init__(self, n: int) -> None:
            self.n = n

        def run(self) -> None:
            ran.append((self.n, threading.current_thread()))
            if self.n == 49:
                done.set()

    for n in range(50):
        serial.submit(Job(n))
    assert done.wait(10)
    assert [n for n, _ in ran] == list(range(50))
    assert len({t for _, t in ran}) == 1 and ran[0][1] is not threading.current_thread()


def test_a_mailbox_thread_hands_over_messages_then_wakes_when_asked() -> None:
    seen: list[object] = []
    woke = threading.Event()

    def handle(message: object) -> float | None:
        seen.append(message)
        if message == "soon":
            return time.monotonic() + 0.01  # asks for the timer
        if message is concurrency.TIMER:
            woke.set()
        return None  # nothing more until the next message

    mailbox = concurrency.MailboxThread("test-mailbox", handle)
    mailbox.post("first")
    mailbox.post("soon")
    assert woke.wait(10)
    assert seen == ["first", "soon", concurrency.TIMER]
    assert mailbox.is_alive()
