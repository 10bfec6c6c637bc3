"""A small router for API Gateway REST proxy events, shared by every API function.

Deliberately not Powertools' REST resolver: it adds tens of milliseconds to every
API function's cold start, and more per request than this module (measured against
it: benchmarks/README.md, suite libraries). This module does the few things our
routes need: route by template, 404/405/400 as JSON, HEAD and OPTIONS on every
route, one request log line per call, and hooks that never fail the request.

HEAD runs the route's GET handler and answers its status and headers with an
empty body; OPTIONS answers 204 with `Allow` (no CORS headers: no origin is
allowed). API Gateway REST routes neither to a function by itself (a method not
declared is its 403), so the template declares each route with `Method: any`
and the 405s, with `Allow`, are ours.

The router knows nothing of what its hooks do: ops.wiring wires in the bearer
token check (`authorize`, for routes registered with `auth=True`), the metrics
and error tracking. It imports no other part of the layer than the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops.log import ProbeLogSampling, bounded, log_request, logger

UNMATCHED_ROUTE = "unmatched"  # metric label for unknown paths: bounded cardinality
MAX_PATH_CHARS = 8192  # longer is 414, as API Gateway answers a request line beyond its limit


class MalformedEvent(ValueError):
    """The invocation is not an API Gateway REST proxy event."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    query: dict[str, str]
    body: str | None
    request_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    params: dict[str, str] = field(default_factory=dict)  # pathParameters of a `{id}` route

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Response = dict[str, Any]
Handler = Callable[[Request], Response]
ResponseHook = Callable[[Request | None, str, int, float], None]
ErrorHook = Callable[[Request | None, str, Exception], None]  # a handler raised (the 500s)
Authorizer = Callable[[Request, str], Response | None]  # (request, route); None: may proceed


def parse_event(event: Any) -> Request:
    if not isinstance(event, dict):
        raise MalformedEvent("event must be a JSON object")
    method, path = event.get("httpMethod"), event.get("path")
    if not isinstance(method, str) or not method:
        raise MalformedEvent("event has no httpMethod: not an API Gateway REST proxy event")
    if not isinstance(path, str) or not path.startswith("/"):
        raise MalformedEvent("event has no path: not an API Gateway REST proxy event")
    headers = event.get("headers") or {}
    query = event.get("queryStringParameters") or {}
    context = event.get("requestContext") or {}
    params = event.get("pathParameters") or {}
    if (
        not isinstance(headers, dict)
        or not isinstance(query, dict)
        or not isinstance(context, dict)
        or not isinstance(params, dict)
    ):
        raise MalformedEvent(
            "headers, queryStringParameters, pathParameters and requestContext must be objects"
        )
    body = event.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedEvent("body must be a string")
    request_id = context.get("requestId")
    return Request(
        method=method.upper(),
        path=path,
        headers={str(k).lower(): str(v) for k, v in headers.items() if v is not None},
        query={str(k): str(v) for k, v in query.items() if v is not None},
        params={str(k): str(v) for k, v in params.items() if v is not None},
        body=body,
        request_id=bounded(request_id) if isinstance(request_id, str) and request_id else None,
        raw=event,
    )


def response(
    status: int, body: str, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    return {
        "statusCode": status,
        "headers": {"Content-Type": content_type, "Cache-Control": "no-store", **(headers or {})},
        "body": body,
    }


def json_response(
    status: int,
    payload: Any,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    return response(status, json.dumps(payload, separators=(",", ":")), content_type, headers)


def error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response(status, {"error": error, "message": message}, headers=headers)


def no_authorizer(req: Request, route: str) -> Response:
    """Until an authorizer is installed, protected routes stay closed (fail closed)."""
    return error_response(
        503, "auth_misconfigured", "no authorizer is installed; protected routes stay closed"
    )


@dataclass
class _Route:
    handler: Handler
    auth: bool
    latency_critical: bool


def _target(methods: dict[str, _Route], method: str) -> _Route | None:
    """The route that answers `method`: its own, or GET's for HEAD."""
    found = methods.get(method)
    return methods.get("GET") if found is None and method == "HEAD" else found


def _allowed(methods: dict[str, _Route]) -> list[str]:
    extra = {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())
    return sorted(set(methods) | extra)


class Api:
    """Routes keyed by the API Gateway resource template (`/health/ready`), and hooks:
    before the invocation (with the context), after each response (request, route,
    status, milliseconds), when a handler raised, and after the invocation."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, _Route]] = {}
        self.authorize: Authorizer = no_authorizer  # for routes registered with auth=True
        self.before_invocation: list[Callable[[Any], None]] = []  # called with the context
        self.response_hooks: list[ResponseHook] = []
        self.after_invocation: list[Callable[[], None]] = []
        self.error_hooks: list[ErrorHook] = []
        self.request_log_sampling: ProbeLogSampling | None = None  # probe lines: a sample
        self.lambda_handler = logger.inject_lambda_context(self._invoke, clear_state=True)

    def route(
        self, method: str, path: str, *, auth: bool = False, latency_critical: bool = False
    ) -> Callable[[Handler], Handler]:
        """`auth`: the request must pass `authorize`. `latency_critical`: callers probe the
        route with tight timeouts (liveness, /metrics), so hooks must never make it wait on
        a dependency after the handler (the metrics flush goes in the background)."""

        def register(handler: Handler) -> Handler:
            route = _Route(handler, auth, latency_critical)
            self._routes.setdefault(path, {})[method.upper()] = route
            return handler

        return register

    def get(
        self, path: str, *, auth: bool = False, latency_critical: bool = False
    ) -> Callable[[Handler], Handler]:
        return self.route("GET", path, auth=auth, latency_critical=latency_critical)

    def is_latency_critical(self, method: str, route: str) -> bool:
        target = _target(self._routes.get(route, {}), method)
        return target is not None and target.latency_critical

    def _route_of(self, req: Request) -> str:
        # API Gateway sends the matched template as `resource`; the local gateway does too.
        resource = req.raw.get("resource")
        if isinstance(resource, str) and resource in self._routes:
            return resource
        return req.path if req.path in self._routes else UNMATCHED_ROUTE

    def _dispatch(self, req: Request, route: str) -> tuple[str, Response]:
        methods = self._routes.get(route)
        if methods is None:
            if len(req.path) > MAX_PATH_CHARS:
                return UNMATCHED_ROUTE, error_response(
                    414, "uri_too_long", f"the path is longer than {MAX_PATH_CHARS} characters"
                )
            return UNMATCHED_ROUTE, error_response(
                404, "not_found", f"no route for {bounded(req.path)}"
            )
        target = _target(methods, req.method)
        allowed = ", ".join(_allowed(methods))
        if target is None and req.method == "OPTIONS":
            headers = {"Allow": allowed, "Cache-Control": "no-store"}
            return route, {"statusCode": 204, "headers": headers, "body": ""}
        if target is None:
            return route, error_response(
                405,
                "method_not_allowed",
                f"{bounded(req.method)} is not allowed on {route}; allowed: {allowed}",
                headers={"Allow": allowed},
            )
        if target.auth:
            denied = self.authorize(req, route)
            if denied is not None:
                return route, denied
        return route, target.handler(req)

    def _invoke(self, event: Any, context: Any) -> Response:
        started = time.perf_counter()
        for before in self.before_invocation:
            self._safely(before, context)
        req: Request | None = None
        route = UNMATCHED_ROUTE
        try:
            req = parse_event(event)
            if req.request_id:
                logger.set_correlation_id(req.request_id)
            route = self._route_of(req)  # before the handler runs: a 500 keeps its route
            route, resp = self._dispatch(req, route)
        except MalformedEvent as exc:
            logger.error("malformed event", extra={"type": "error", "error": str(exc)})
            resp = error_response(400, "bad_request", str(exc))
        except Exception as exc:  # the handler failed: answer 500 as JSON, log the traceback
            logger.exception("unhandled error", extra={"type": "error", "error": repr(exc)})
            for on_error in self.error_hooks:
                self._safely(on_error, req, route, exc)
            resp = error_response(
                500, "internal_error", f"request {getattr(req, 'request_id', None)} failed"
            )
        if req is not None and req.method == "HEAD":  # any answer's status and headers only
            resp = {**resp, "body": ""}
        duration_ms = (time.perf_counter() - started) * 1000.0
        status = int(resp["statusCode"])
        log_request(
            method=req.method if req else "UNKNOWN",
            url=req.path if req else "",
            route=route,
            status=status,
            duration_ms=duration_ms,
            request_id=req.request_id if req else None,
            sampling=self.request_log_sampling,
        )
        for hook in self.response_hooks:
            self._safely(hook, req, route, status, duration_ms)
        for after in self.after_invocation:
            self._safely(after)
        return resp

    @staticmethod
    def _safely(fn: Callable[..., None], *args: Any) -> None:
        """Observability must never fail the request it observes."""
        try:
            fn(*args)
        except Exception as exc:
            logger.warning("response hook failed", extra={"type": "error", "error": repr(exc)})
