"""API Gateway REST proxy events (the shape Lambda receives behind API Gateway), and the
way API Gateway picks a resource template (`/listings/{id}`, `/files/{proxy+}`) for a path."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote


def _segments(path: str) -> list[str]:
    return [seg for seg in path.split("/") if seg]


def match_template(template: str, path: str) -> tuple[tuple[int, ...], dict[str, str]] | None:
    """(specificity, pathParameters) when `path` fits `template`, else None.

    Literal segments must be equal, `{name}` takes one non-empty segment, and a final
    `{name+}` takes the rest (one segment or more). Specificity ranks literal over
    parameter over greedy, segment by segment, as API Gateway prefers the most specific.
    """
    wanted, given = _segments(template), _segments(path)
    rank: list[int] = []
    params: dict[str, str] = {}
    for i, part in enumerate(wanted):
        if part.startswith("{") and part.endswith("+}"):
            if i != len(wanted) - 1 or len(given) <= i:
                return None
            params[part[1:-2]] = unquote("/".join(given[i:]))
            return (*rank, 0), params
        if i >= len(given):
            return None
        if part.startswith("{") and part.endswith("}"):
            params[part[1:-1]] = unquote(given[i])
            rank.append(1)
        elif part == given[i]:
            rank.append(2)
        else:
            return None
    if len(given) != len(wanted):
        return None
    return tuple(rank), params


def resolve(templates: Iterable[str], path: str) -> tuple[str, dict[str, str]] | None:
    """The template API Gateway would route `path` to, with its pathParameters."""
    best: tuple[tuple[int, ...], str, dict[str, str]] | None = None
    for template in templates:
        found = match_template(template, path)
        if found is not None and (best is None or found[0] > best[0]):
            best = (found[0], template, found[1])
    return None if best is None else (best[1], best[2])


def proxy_event(
    *,
    method: str,
    path: str,
    resource: str,
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    stage: str = "local",
    source_ip: str = "127.0.0.1",
    path_parameters: dict[str, str] | None = None,
) -> dict[str, object]:
    headers = dict(headers or {})
    multi_query = parse_qs(query, keep_blank_values=True) if query else {}
    text_body: str | None = None
    is_base64 = False
    if body:
        try:
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            text_body, is_base64 = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(time.time() * 1000),
            "protocol": "HTTP/1.1",
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent")},
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": "127.0.0.1",
        },
        "body": text_body,
        "isBase64Encoded": is_base64,
    }
