"""Bearer-token protection for `/metrics` and `/health/detailed`.

The token is `METRICS_AUTH_TOKEN` locally, or the Secrets Manager secret named by
`METRICS_AUTH_TOKEN_SECRET_ARN` in AWS (a plain string, or JSON with a `token`
field). No token configured means the routes are open.
"""

from __future__ import annotations

import hmac
import json

from ops.api import Request, Response, error_response
from ops.config import settings


def expected_token() -> str | None:
    cfg = settings()
    if cfg.metrics_token:
        return cfg.metrics_token
    if cfg.metrics_token_secret_arn:
        from ops.secretstore import get_secret

        raw = get_secret(cfg.metrics_token_secret_arn).strip()
        if raw.startswith("{"):
            return str(json.loads(raw)["token"])
        return raw
    return None


def unauthorized_response(req: Request) -> Response | None:
    """None when the request may proceed; a 401 response otherwise."""
    token = expected_token()
    if token is None:
        return None
    scheme, _, presented = (req.header("authorization") or "").partition(" ")
    # compare_digest on bytes: constant time whatever the presented value's length or content.
    if scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        return None
    return error_response(
        401,
        "unauthorized",
        "a valid bearer token is required",
        headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
    )
