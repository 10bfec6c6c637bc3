"""OpenTelemetry tracing: off by default, and then free; on with `OTEL_TRACES_EXPORTER=otlp`.

    with span("retention batch", table="chat_sessions") as s:
        ...
        s.set(rows=n)

Off (OTEL_TRACES_EXPORTER unset or `none`, or OTEL_SDK_DISABLED=true): `span()` returns
one shared no-op context manager, `record()` does nothing, no hook is
installed, and nothing of OpenTelemetry is imported (tests/api/test_tracing.py proves it in
fresh processes for every function).

On: `configure()` (at init: `ops.wiring.service_api()`, the retention handler's decorator)
imports the SDK and exports over OTLP/HTTP (protobuf) to OTEL_EXPORTER_OTLP_ENDPOINT +
`/v1/traces`. X-Ray's own OTLP endpoint (`https://xray.<region>.amazonaws.com`) takes no
unsigned request: requests to it are signed with SigV4 by botocore (in the Lambda runtime),
so no collector extension is needed (docs/tracing.md).

* Parent: Lambda's trace header (`_X_AMZN_TRACE_ID`, read per invocation), extracted by the
  AWS X-Ray propagator. The spans join the function's X-Ray trace under its Lambda segment
  and follow its sampling decision: `Sampled=0` records and sends nothing.
* Only inside an invocation: `span()` outside one (a shutdown flush, a background thread
  with no context) is the no-op, never a stray root trace. Work handed to a worker thread
  keeps its parent: ops.concurrency.BoundedCall runs it in a copy of the caller's context.
* Sent before the invocation returns: Lambda freezes the container once the handler has
  returned, and a batch processor's thread would send the spans at some later thaw, or
  never. Spans are queued by a BatchSpanProcessor and force-flushed at the end of each
  invocation (one POST per invocation), waiting at most EXPORT_TIMEOUT_S (the exporter's
  own timeout too). Spans not sent then are dropped, and the log says so (`type=tracing`,
  `status` `flush_timeout` or `export_failed`).
* Never in a span: a query's parameters, a token, a connection string, a URL. Attributes
  are route templates, methods, statuses, check names, table names, counts and outcomes;
  an exception is recorded by its type only (its message may quote a connection string).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import wraps
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ops.config import lambda_trace_header, settings

if TYPE_CHECKING:
    from ops.api import Api, Request

EXPORT_TIMEOUT_S = 1.0  # the most an invocation waits for its spans to be sent
XRAY_HOST = re.compile(r"^https://xray\.([a-z0-9-]+)\.amazonaws\.com(?::443)?(?:/|$)")

Attr = str | bool | int | float
F = TypeVar("F", bound=Callable[..., Any])


class Span(Protocol):
    def set(self, **attrs: Attr | None) -> None: ...


class _NoSpan:
    """Tracing off (or no invocation to belong to): the whole cost of a `with span(...)`."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, **attrs: Attr | None) -> None:
        return None


_NOOP = _NoSpan()
_tracing: _Tracing | None = None  # set by configure() when tracing is on
_configured = False


def span(name: str, **attrs: Attr | None) -> AbstractContextManager[Span]:
    """A child span of the current invocation's (no-op when off or outside an invocation)."""
    if _tracing is None:
        return _NOOP
    return _tracing.child(name, attrs)


def record(name: str, started: float, ended: float, **attrs: Attr | None) -> None:
    """A finished child span from `time.perf_counter()` readings (work timed elsewhere)."""
    if _tracing is not None:
        _tracing.record(name, started, ended, attrs)


def configure() -> bool:
    """Start tracing if the settings say so (once per container); True when on."""
    global _tracing, _configured
    if not _configured:
        _configured = True
        cfg = settings()
        if cfg.tracing_configured:
            endpoint = (cfg.otel_exporter_endpoint or "http://localhost:4318") + "/v1/traces"
            try:
                _tracing = _Tracing(endpoint, cfg.service, cfg.version)
            except Exception as exc:  # tracing must never fail the function it observes
                from ops.log import logger

                logger.error(
                    "tracing off: OpenTelemetry could not be set up",
                    extra={"type": "tracing", "status": "disabled", "error": repr(exc)},
                )
    return _tracing is not None


def instrument(app: Api) -> None:
    """One span per API invocation (named `METHOD /route/template`), its children inside,
    sent before the invocation returns. Installs nothing when tracing is off."""
    if not configure():
        return
    tracing = _tracing
    assert tracing is not None
    local = threading.local()

    def begin(context: Any) -> None:
        local.invocation = tracing.begin("invocation", context)

    def on_response(req: Request | None, route: str, status: int, duration_ms: float) -> None:
        invocation = getattr(local, "invocation", None)
        if invocation is not None:
            method = req.method if req is not None else "UNKNOWN"
            invocation.describe(method, route, status)

    def end() -> None:
        invocation = local.__dict__.pop("invocation", None)
        if invocation is not None:
            tracing.end(invocation)

    app.before_invocation.append(begin)
    app.response_hooks.append(on_response)
    app.after_invocation.append(end)  # after the metrics flush: its span is inside


def traced_invocation(name: str) -> Callable[[F], F]:
    """A non-API handler (the retention run) as one span, sent before it returns; the
    handler itself when tracing is off."""

    def decorate(handler: F) -> F:
        if not configure():
            return handler
        tracing = _tracing
        assert tracing is not None

        @wraps(handler)
        def traced(event: Any, context: Any) -> Any:
            invocation = tracing.begin(name, context)
            try:
                return handler(event, context)
            except BaseException as exc:
                invocation.failed(exc)
                raise
            finally:
                tracing.end(invocation)

        return traced  # type: ignore[return-value]

    return decorate


def reset() -> None:
    """A new container: settings are read again at the next configure() (tests)."""
    global _tracing, _configured
    if _tracing is not None:
        _tracing.shutdown()
    _tracing = None
    _configured = False


def xray_region(endpoint: str) -> str | None:
    """The region of an X-Ray OTLP endpoint (SigV4-signed), None for any other endpoint."""
    match = XRAY_HOST.match(endpoint)
    return match.group(1) if match else None


# -- tracing on: everything below imports OpenTelemetry only when instantiated ------------


def _clean(attrs: dict[str, Attr | None]) -> dict[str, Attr]:
    return {k: v for k, v in attrs.items() if v is not None}


class _Invocation:
    def __init__(self, span: Any, token: object) -> None:
        self.span = span
        self.token = token

    def describe(self, method: str, route: str, status: int) -> None:
        from opentelemetry.trace import StatusCode

        self.span.update_name(f"{method} {route}")
        self.span.set_attributes(
            {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
                "outcome": "error" if status >= 500 else "ok",
            }
        )
        if status >= 500:
            self.span.set_status(StatusCode.ERROR)

    def failed(self, exc: BaseException) -> None:
        from opentelemetry.trace import StatusCode

        self.span.set_attributes({"outcome": "error", "error.type": type(exc).__name__})
        self.span.set_status(StatusCode.ERROR)


class _Live:
    """A child span as a context manager; an exception marks it failed by its type only."""

    __slots__ = ("_manager", "_span")

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._span: Any = None

    def __enter__(self) -> _Live:
        self._span = self._manager.__enter__()
        return self

    def set(self, **attrs: Attr | None) -> None:
        self._span.set_attributes(_clean(attrs))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        from opentelemetry.trace import StatusCode

        if exc_type is not None:
            self._span.set_attributes({"outcome": "error", "error.type": exc_type.__name__})
            self._span.set_status(StatusCode.ERROR)
        elif "outcome" not in (getattr(self._span, "attributes", None) or {}):
            self._span.set_attribute("outcome", "ok")
        self._manager.__exit__(exc_type, exc, tb)


class _Tracing:
    """The SDK, set up once per container."""

    def __init__(self, endpoint: str, service: str, version: str) -> None:
        # Deferred: only a container with tracing on pays for the SDK (cold start).
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.propagators.aws import AwsXRayPropagator
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        region = xray_region(endpoint)
        session = _sigv4_session(region) if region else None

        class Exporter(OTLPSpanExporter):
            """Remembers whether the last export failed, so that the log can say so."""

            failed = False

            def export(self, spans: Any) -> SpanExportResult:
                result = super().export(spans)
                self.failed = result is not SpanExportResult.SUCCESS
                return result

        self.exporter = Exporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S, session=session)
        resource = Resource({"service.name": service, "service.version": version})
        # Parent-based: Lambda's X-Ray sampling decides; a root (no header: local runs) is kept.
        sampler = ParentBased(ALWAYS_ON)
        self.provider = TracerProvider(sampler=sampler, resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("ops")
        self.propagator = AwsXRayPropagator()
        self._trace = trace

    def _inside(self) -> bool:
        return bool(self._trace.get_current_span().is_recording())

    def child(self, name: str, attrs: dict[str, Attr | None]) -> AbstractContextManager[Span]:
        if not self._inside():
            return _NOOP
        return _Live(
            self.tracer.start_as_current_span(
                name,
                attributes=_clean(attrs),
                record_exception=False,  # its message may quote a secret: the type only
                set_status_on_exception=False,
            )
        )

    def record(
        self, name: str, started: float, ended: float, attrs: dict[str, Attr | None]
    ) -> None:
        if not self._inside():
            return
        now_ns, now = time.time_ns(), time.perf_counter()
        span = self.tracer.start_span(
            name, attributes=_clean(attrs), start_time=now_ns - int((now - started) * 1e9)
        )
        span.end(end_time=now_ns - int((now - ended) * 1e9))

    def begin(self, name: str, context: Any) -> _Invocation:
        from opentelemetry import context as otel_context
        from opentelemetry.trace import SpanKind

        header = lambda_trace_header()
        parent = self.propagator.extract({"X-Amzn-Trace-Id": header} if header else {})
        request_id = getattr(context, "aws_request_id", None)
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_clean({"faas.invocation_id": request_id}),
        )
        token = otel_context.attach(self._trace.set_span_in_context(span, parent))
        return _Invocation(span, token)

    def end(self, invocation: _Invocation) -> None:
        from opentelemetry import context as otel_context

        attributes = getattr(invocation.span, "attributes", None) or {}
        if "outcome" not in attributes:
            invocation.span.set_attribute("outcome", "ok")
        invocation.span.end()
        otel_context.detach(invocation.token)  # type: ignore[arg-type]
        flushed = self.provider.force_flush(int(EXPORT_TIMEOUT_S * 1000))
        if not flushed or self.exporter.failed:  # the spans are dropped, not kept for later
            from ops.log import logger

            logger.warning(
                "spans not sent before the invocation returned: dropped",
                extra={
                    "type": "tracing",
                    "status": "export_failed" if flushed else "flush_timeout",
                },
            )

    def shutdown(self) -> None:
        self.provider.shutdown()


def _sigv4_session(region: str) -> Any:
    """A requests session that signs each export for X-Ray (service `xray`) with the
    function's credentials, read from botocore at each request (they rotate)."""
    import botocore.session
    import requests
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials_source = botocore.session.get_session()

    class _SigV4(requests.auth.AuthBase):
        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            credentials = credentials_source.get_credentials()
            if credentials is None:  # unsigned: X-Ray answers 403 and the SDK logs it
                return r
            signed = AWSRequest(
                method=r.method,
                url=r.url,
                data=r.body,
                headers={"Content-Type": r.headers.get("Content-Type", "")},
            )
            SigV4Auth(credentials.get_frozen_credentials(), "xray", region).add_auth(signed)
            r.headers.update(dict(signed.headers.items()))
            return r

    session = requests.Session()
    session.auth = _SigV4()
    return session
