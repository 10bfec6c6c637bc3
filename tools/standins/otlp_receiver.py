"""A loopback OTLP/HTTP receiver standing in for a collector or X-Ray's OTLP endpoint: it
accepts `POST /v1/traces` (protobuf, as the SDK's exporter sends it), decodes each
ExportTraceServiceRequest with opentelemetry-proto's classes and keeps the spans.

Tests use it; run on its own, it prints what the bundle sends:

    .venv/bin/python -m tools.standins.otlp_receiver  # prints OTEL_EXPORTER_OTLP_ENDPOINT=…, spans
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tools.standins.loopback import Received, ingest_endpoint


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root
    kind: int  # opentelemetry.proto's Span.SpanKind (2: SERVER)
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int
    resource: dict[str, Any]
    received_at: float  # time.monotonic(): one clock for every process on the machine


@dataclass
class Export:
    headers: dict[str, str]
    body: bytes  # everything the exporter sent, to search for secrets
    spans: list[ReceivedSpan]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes, received_at: float) -> list[ReceivedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes=_attributes(s.attributes),
                        status_code=s.status.code,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        resource=resource,
                        received_at=received_at,
                    )
                )
    return spans


class OtlpReceiver(Received[Export]):
    @property
    def endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for it (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        return [s for e in self.received() for s in e.spans]

    def raw(self) -> bytes:
        return b"\n".join(e.body for e in self.received())

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedSpan]:
        return self.wait_until(count, self.spans, timeout_s)


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    def on_post(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path != "/v1/traces":
            return 404, "text/plain", b""
        spans = decode(body, time.monotonic())
        receiver.add(Export(headers, body, spans))
        return 200, "application/x-protobuf", b""

    with ingest_endpoint(on_post) as port:
        receiver = OtlpReceiver(port=port)
        yield receiver


def main() -> None:
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # like Ctrl-C: what arrived is printed before exit
    with otlp_receiver() as receiver:
        print(f"OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}")
        shown = 0

        def show_new() -> None:
            nonlocal shown
            spans = receiver.spans()
            for s in spans[shown:]:
                shown_span = {k: v for k, v in vars(s).items() if k != "resource"}
                print(json.dumps(shown_span, default=str), flush=True)
            shown = len(spans)

        try:
            while True:
                show_new()
                time.sleep(0.2)
        except KeyboardInterrupt:
            show_new()


if __name__ == "__main__":
    main()
