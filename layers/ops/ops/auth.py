"""Bearer-token protection for `/metrics` and `/health/detailed`.

The token is `METRICS_AUTH_TOKEN` locally, or the Secrets Manager secret named by
`METRICS_AUTH_TOKEN_SECRET_ARN` in AWS (a plain string, or JSON with a `token`
field). No token source configured means the routes are open. A configured
source that yields no usable token (blank, not a string, missing, unreadable)
fails closed: 503 naming the misconfiguration, logged once per container.

Every refusal is counted in `auth_failures_total{route, reason}` (the route template;
reason `missing`: no credentials, `wrong`: not the valid bearer token, `misconfigured`:
the 503 above), so that someone guessing the token shows as a burst (the
AuthFailureBurst alert) rather than as one status among others.
"""

from __future__ import annotations

import hmac
import json

from ops.api import Request, Response, error_response
from ops.config import settings
from ops.log import logger
from ops.metrics import catalogue as m


class TokenMisconfigured(Exception):
    """A token source is configured but yields no usable token; the message says why."""


_reported: set[str] = set()  # misconfigurations already logged by this container


def _token_from_secret(arn: str) -> str:
    from ops.secretstore import get_secret  # boto3: only when the token is a secret

    try:
        raw = get_secret(arn).strip()
    except Exception as exc:  # AWS error, missing secret, no permission: closed, not open
        raise TokenMisconfigured(
            f"METRICS_AUTH_TOKEN_SECRET_ARN cannot be read ({type(exc).__name__})"
        ) from None
    if not raw.startswith("{"):
        return raw
    try:
        token = json.loads(raw).get("token")
    except (ValueError, AttributeError):  # `from None` below: the decode error quotes the secret
        raise TokenMisconfigured(
            "METRICS_AUTH_TOKEN_SECRET_ARN holds text starting with '{' that is not a JSON object"
        ) from None
    if not isinstance(token, str):
        raise TokenMisconfigured(
            'METRICS_AUTH_TOKEN_SECRET_ARN JSON must have a string "token" field, got '
            + ("none" if token is None else type(token).__name__)
        )
    return token.strip()


def expected_token() -> str | None:
    """The token to compare with; None when no token source is configured (open routes)."""
    cfg = settings()
    if cfg.metrics_token is not None:
        token, source = cfg.metrics_token, "METRICS_AUTH_TOKEN"
    elif cfg.metrics_token_secret_arn is not None:
        token, source = (
            _token_from_secret(cfg.metrics_token_secret_arn),
            "METRICS_AUTH_TOKEN_SECRET_ARN's token",
        )
    else:
        return None
    if not token:
        raise TokenMisconfigured(f"{source} is empty or whitespace only")
    return token


def _misconfigured(reason: str) -> Response:
    if reason not in _reported:
        _reported.add(reason)
        logger.error(
            "auth misconfigured: protected routes answer 503 until it is fixed",
            extra={"type": "error", "error": reason},
        )
    return error_response(
        503, "auth_misconfigured", f"{reason}; protected routes stay closed until it is fixed"
    )


def _utf8(text: str) -> bytes:
    # A header may carry lone surrogates (API Gateway passes what it was sent): never a 500.
    return text.encode("utf-8", "surrogatepass")


def unauthorized_response(req: Request, route: str) -> Response | None:
    """None when the request may proceed; a 401 (or 503 when misconfigured) otherwise."""
    try:
        token = expected_token()
    except TokenMisconfigured as exc:
        m.AUTH_FAILURES.labels(route=route, reason="misconfigured").inc()
        return _misconfigured(str(exc))
    if token is None:
        return None
    header = req.header("authorization") or ""
    scheme, _, presented = header.partition(" ")
    # compare_digest on bytes: constant time whatever the presented value's length or content.
    if scheme.lower() == "bearer" and hmac.compare_digest(_utf8(presented.strip()), _utf8(token)):
        return None
    # No credential at all, or `Bearer` with nothing after it; anything else is a wrong guess.
    missing = not header.strip() or (scheme.lower() == "bearer" and not presented.strip())
    reason = "missing" if missing else "wrong"
    m.AUTH_FAILURES.labels(route=route, reason=reason).inc()
    return error_response(
        401,
        "unauthorized",
        "a valid bearer token is required",
        headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
    )


def reset() -> None:
    """A new container: misconfigurations are logged again (tests)."""
    _reported.clear()
