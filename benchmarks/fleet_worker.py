"""One worker process of the fleet benchmark (benchmarks/suite_fleet.py): many container
identities multiplexed over one interpreter, served one invocation at a time.

An identity is what a Lambda container owns: its pending deltas, outbox (identity, shard,
numbered batches), flush clock and store connection (`Identity.state`). Each receives a
Poisson stream of `rate` invocations/s (the first `hot` slots: `hot_rate`) through the real
`ops.api.Api` handler (the router's instrumentation records, the flush policy flushes). It
lives an exponentially distributed time, then ends by "SIGTERM" (its shutdown flush, with
Lambda's budget) or, one in ten, by "SIGKILL" (its connection dropped mid-air, nothing
flushed), and a new identity takes its slot. The process's own SIGTERM ends every identity
alive the first way. What the identities print (request log lines, EMF) is counted, not kept.

Run by the suite: `python -m benchmarks.fleet_worker '<json spec>'`.
"""

from __future__ import annotations

import heapq
import json
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ops.metrics.container import ContainerMetrics

KILL_SHARE = 0.1
ROUTES = (
    ("GET", "/items", "/items"),
    ("POST", "/items", "/items"),
    ("GET", "/items/42", "/items/{id}"),
    ("DELETE", "/items/42", "/items/{id}"),
)
STATUSES = ((200, 0.93), (404, 0.05), (503, 0.02))


class Printed:
    """stdout of the identities: request log lines and EMF documents, counted by kind."""

    def __init__(self) -> None:
        self.counts = {"log_lines": 0, "log_bytes": 0, "emf_docs": 0, "emf_bytes": 0}
        self.counts |= {"emf_bytes_hot": 0}  # printed by identities served at the production rate
        self.emf_keys: set[str] = set()  # metric name + dimension values: CloudWatch metrics
        self.hot = False  # whether the identity printing now is one of those
        self._line = ""

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            kind = "emf" if '"_aws"' in line else "log"
            self.counts[f"{kind}_{'docs' if kind == 'emf' else 'lines'}"] += 1
            self.counts[f"{kind}_bytes"] += len(line.encode()) + 1
            if kind == "emf" and self.hot:
                self.counts["emf_bytes_hot"] += len(line.encode()) + 1
            if kind == "emf":
                self._note_metrics(json.loads(line))
        return len(text)

    def _note_metrics(self, doc: dict[str, Any]) -> None:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                values = ",".join(f"{d}={doc.get(d)}" for d in dims)
                for metric in directive["Metrics"]:
                    self.emf_keys.add(f"{metric['Name']}|{values}")

    def flush(self) -> None:
        pass


# -- an identity's metrics state: one ops.metrics.container.ContainerMetrics each, with a
# store connection of its own, flushed by the one entry point.


def _new_state() -> ContainerMetrics:
    from ops.config import settings
    from ops.db import Database, store_source
    from ops.metrics.container import ContainerMetrics

    name = f"{settings().service}-metrics"
    return ContainerMetrics(connect=lambda: Database(application_name=name, source=store_source))


def _end_state(state: ContainerMetrics, how: str) -> str:
    """End an identity ("kill": its connection dropped, a flush in flight settles as unknown
    and the cursor tells; otherwise its shutdown flush); its container id."""
    from ops.metrics.container import FlushReason

    if how != "kill":
        state.flush(FlushReason.SHUTDOWN)
    box = state.outbox_if_any()
    if box is None:
        return ""
    state.database().discard()  # it flushed, so it has a connection; the process is gone
    return str(box.container)


def _trace(current: Callable[[], Any], flushed: Callable[[Any, float, int], None]) -> None:
    """Note which batch each invocation's recordings joined (`owner.notes[seq]` = how many
    it had served), and time every flush job (one write transaction) of each identity."""
    from ops.metrics import store

    add, run = store.Outbox.add, store._Job.run

    def traced_add(box: store.Outbox, deltas: Any) -> None:
        add(box, deltas)
        owner = box.__dict__.setdefault("fleet_owner", current())
        if box.batches:  # before any flush can send it: the batch covers `served`
            owner.notes[box.batches[-1].seq] = owner.served

    def traced_run(job: store._Job) -> None:
        started = time.perf_counter()
        run(job)
        series = sum(b.series for b in job.batches)
        flushed(job.box.__dict__["fleet_owner"], (time.perf_counter() - started) * 1000, series)

    store.Outbox.add = traced_add  # type: ignore[method-assign,assignment]
    store._Job.run = traced_run  # type: ignore[method-assign,assignment]


class Identity:
    """One container's life: its metrics state and what the suite traces of it."""

    def __init__(
        self, state: ContainerMetrics, rng: random.Random, lifetime_s: float, hot: bool
    ) -> None:
        self.state = state
        self.hot = hot  # served at the production rate
        self.born = time.time()
        self.dies = time.monotonic() + rng.expovariate(1.0 / lifetime_s)
        self.killed = rng.random() < KILL_SHARE
        self.served = 0
        self.notes: dict[int, int] = {}  # batch seq -> invocations served when it last grew
        self.jobs = 0  # flushes sent (each one write transaction)
        self.rows = 0  # series rows those flushes carried
        self.container = ""

    def record(self, end: str) -> dict[str, Any]:
        """What the suite reads of an identity that ended (`end`: term, kill or end)."""
        kept = {k: getattr(self, k) for k in ("container", "served", "jobs", "rows", "hot", "born")}
        return {**kept, "notes": sorted(self.notes.items()), "died": time.time(), "end": end}


def main(spec: dict[str, Any]) -> None:
    import os

    os.environ.update(spec["env"])
    from ops.api import Request, Response, json_response
    from ops.log import logger
    from ops.metrics import process_hooks
    from ops.metrics.container import using
    from ops.wiring import service_api
    from tools.runtime.apigw import proxy_event
    from tools.runtime.handler import LambdaContext

    # No process-wide shutdown flush or deadline watch (installed with the router's
    # instrumentation, so before it): this worker ends each identity itself.
    process_hooks._installed = True
    printed = Printed()
    sys.stdout = printed
    logger.registered_handler.setStream(printed)  # type: ignore[attr-defined]
    rng = random.Random()
    app = service_api()

    def handle(req: Request) -> Response:
        roll, status = rng.random(), 200
        for code, share in STATUSES:
            if roll < share:
                status = code
                break
            roll -= share
        return json_response(status, {"route": req.path})

    for method, _, template in ROUTES:
        app.route(method, template)(handle)
    events = [proxy_event(method=m, path=p, resource=r) for m, p, r in ROUTES]
    stats: dict[str, Any] = {
        "flush_ms": [],
        "series_rows": 0,
        "invoke_ms": [],
        "late": 0,
        "max_lag_ms": 0.0,
        "per_s": [],
    }
    current: list[Identity] = []

    def served() -> None:  # before the flush hook: the invocation's recordings are complete
        current[0].served += 1

    def flushed(owner: Identity, ms: float, series: int) -> None:
        owner.jobs += 1
        owner.rows += series
        stats["flush_ms"].append(ms)
        stats["series_rows"] += series

    app.after_invocation.insert(0, served)
    _trace(lambda: current[0], flushed)
    lifetime_s, hot = spec["lifetime_s"], spec["hot"]
    rates = [spec["hot_rate"] if i < hot else spec["rate"] for i in range(spec["identities"])]

    def born(slot: int) -> Identity:
        return Identity(_new_state(), rng, lifetime_s, slot < hot)

    slots = [born(i) for i in range(spec["identities"])]
    records: list[dict[str, Any]] = []

    def end(slot: int, how: str) -> None:
        ident = slots[slot]
        current[:] = [ident]
        printed.hot = ident.hot
        ident.container = _end_state(ident.state, how)
        records.append(ident.record(how))

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while time.time() < spec["start_at"]:
        time.sleep(0.01)
    start_mono, start_wall = time.monotonic(), spec["start_at"]
    arrivals = [(start_mono + rng.expovariate(rates[i]), i) for i in range(len(slots))]
    heapq.heapify(arrivals)
    deaths = sorted(((ident.dies, i) for i, ident in enumerate(slots)), reverse=True)
    ctx = LambdaContext("fleet", 10)
    while not stop:
        at, slot = arrivals[0]
        now = time.monotonic()
        while deaths and deaths[-1][0] <= now:  # deaths come between invocations
            _, dying = deaths.pop()
            end(dying, "kill" if slots[dying].killed else "term")
            slots[dying] = born(dying)
            deaths.append((slots[dying].dies, dying))
            deaths.sort(reverse=True)
        if at > now:
            time.sleep(min(at - now, 0.05))
            continue
        lag_ms = (now - at) * 1000
        stats["max_lag_ms"] = max(stats["max_lag_ms"], lag_ms)
        stats["late"] += lag_ms > 100
        heapq.heapreplace(arrivals, (at + rng.expovariate(rates[slot]), slot))
        ident = slots[slot]
        current[:] = [ident]
        printed.hot = ident.hot
        started = time.perf_counter()
        with using(ident.state):
            app.lambda_handler(events[rng.randrange(len(events))], ctx)
        stats["invoke_ms"].append((time.perf_counter() - started) * 1000)
        second = int(time.time() - start_wall)
        per_s = stats["per_s"]
        per_s.extend([0] * (second + 1 - len(per_s)))
        per_s[second] += 1
    for slot in range(len(slots)):  # the process's SIGTERM: every identity's shutdown flush
        end(slot, "end")
    stats["invoke_ms"] = stats["invoke_ms"][::10]  # a 10% sample is enough for percentiles
    out = {
        **stats,
        "identities": records,
        "out": printed.counts,
        "emf_keys": sorted(printed.emf_keys),
    }
    with open(spec["out"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
