"""Build API Gateway REST proxy events (the shape Lambda receives behind API Gateway)."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs


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
        "pathParameters": None,
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
