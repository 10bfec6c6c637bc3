"""A loopback HTTP server standing in for Sentry's ingest: it accepts the SDK's
envelopes (POST /api/<project>/envelope/, gzip or plain) and keeps them to inspect.

Tests use it; run on its own, it shows what the bundle
would send to Sentry:

    .venv/bin/python -m tools.standins.sentry_ingest   # prints SENTRY_DSN=…, then each event
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tools.standins.loopback import Received, ingest_endpoint

PUBLIC_KEY = "testpublickey"
PROJECT = "1"


@dataclass
class Envelope:
    path: str
    headers: dict[str, str]
    raw: str  # the decoded body, everything the SDK sent
    items: list[tuple[dict[str, Any], Any]]  # (item header, parsed payload)
    received_at: float  # time.monotonic(): one clock for every process on the machine


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], Any]]]:
    """Sentry's envelope format: a header line, then per item a header line and a payload
    (`length` bytes when given, else up to the next newline)."""
    first, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length + 1 :]
        try:
            parsed: Any = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        items.append((item_header, parsed))
    return json.loads(first), items


class SentryIngest(Received[Envelope]):
    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self.port}/{PROJECT}"

    def items(self, kind: str) -> list[Any]:
        return [p for e in self.received() for h, p in e.items if h.get("type") == kind]

    def events(self) -> list[dict[str, Any]]:
        return self.items("event")

    def event_received_at(self) -> list[float]:
        return [e.received_at for e in self.received() for h, _ in e.items if h["type"] == "event"]

    def raw(self) -> str:
        return "\n".join(e.raw for e in self.received())

    def wait_for_events(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        return self.wait_until(count, self.events, timeout_s)


@contextmanager
def sentry_ingest() -> Iterator[SentryIngest]:
    def on_post(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        _, items = parse_envelope(body)
        envelope = Envelope(path, headers, body.decode(errors="replace"), items, time.monotonic())
        ingest.add(envelope)
        return 200, "application/json", b"{}"

    with ingest_endpoint(on_post) as port:
        ingest = SentryIngest(port=port)
        yield ingest


def main() -> None:
    with sentry_ingest() as ingest:
        print(f"SENTRY_DSN={ingest.dsn}", flush=True)
        shown = 0
        try:
            while True:
                events = ingest.events()
                for event in events[shown:]:
                    print(json.dumps(event, indent=2), flush=True)
                shown = len(events)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
