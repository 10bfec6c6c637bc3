"""What leaves for Sentry: an error event with its credentials, bodies and cookies removed.

The SDK is configured not to collect most of it (send_default_pii=False, no frame
locals, no request bodies); this is the last pass over every event, transaction and
breadcrumb before it is queued, so that nothing an exception message, a header or a
log line happens to carry slips out: URL passwords (DATABASE_URL), bearer and basic
credentials, `password=`/`token=` pairs, values under sensitive keys, and the exact
secret strings this container knows (the metrics token, the database URL and password).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

FILTERED = "[Filtered]"

# Keys whose values are never sent, wherever they appear (headers, extra, contexts, data).
_SENSITIVE_KEY = re.compile(
    r"pass(wd|word)?|secret|token|cookie|authorization|credential|api[-_]?key|private[-_]?key"
    r"|database[-_]?url|dsn|session|^auth$|^pwd$",
    re.IGNORECASE,
)
# Request headers worth keeping for triage; every other header is dropped.
_KEPT_HEADERS = frozenset({"accept", "content-type", "content-length", "user-agent"})
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s@/]*@")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]+")
_SECRET_PAIR = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|access_token|api_key|apikey)(['\"]?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)"
)


class EventScrubber:
    """`before_send` / `before_send_transaction` / `before_breadcrumb` for sentry_sdk.init."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so that a URL is replaced before the password inside it.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub_text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, FILTERED)
        text = _URL_PASSWORD.sub(rf"\1:{FILTERED}@", text)
        text = _AUTH_SCHEME.sub(rf"\1\2{FILTERED}", text)
        return _SECRET_PAIR.sub(rf"\1\2{FILTERED}", text)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {
                k: FILTERED
                if isinstance(k, str) and _SENSITIVE_KEY.search(k) and value[k] not in (None, "")
                else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value

    def before_send(self, event: dict[str, Any], _hint: Any = None) -> dict[str, Any]:
        request = event.get("request")
        if isinstance(request, dict):
            # Bodies, cookies and query strings are never sent; headers only from an allowlist.
            for key in ("data", "cookies", "query_string", "env"):
                request.pop(key, None)
            headers = request.get("headers")
            if isinstance(headers, dict):
                request["headers"] = {
                    k: v for k, v in headers.items() if str(k).lower() in _KEPT_HEADERS
                }
        for exception in (event.get("exception") or {}).get("values") or []:
            for frame in (exception.get("stacktrace") or {}).get("frames") or []:
                frame.pop("vars", None)  # frame locals hold connection parameters
        user = event.get("user")
        if isinstance(user, dict):
            user.pop("ip_address", None)
        scrubbed: dict[str, Any] = self.scrub(event)
        return scrubbed

    def before_breadcrumb(self, crumb: dict[str, Any], _hint: Any = None) -> dict[str, Any]:
        scrubbed: dict[str, Any] = self.scrub(crumb)
        return scrubbed
