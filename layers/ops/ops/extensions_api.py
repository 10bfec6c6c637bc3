"""The Lambda Extensions API, as far as the layer uses it: an internal extension that
subscribes to no event.

Lambda sends the function process SIGTERM at shutdown only once an extension is
registered (ops.metrics.process_hooks flushes on it). Lambda ends the Init phase only when
every registered extension has asked for its next event, so a daemon thread asks and
then waits as long as the process lives: no event is ever sent.

http.client rather than HTTP/1.1 written on a socket: under 1% of a cold start more, for
the library's parsing (measured: benchmarks/README.md, suite shutdown). Loaded only when
AWS_LAMBDA_RUNTIME_API is set (on Lambda), at the first registration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ops.concurrency import start_daemon

if TYPE_CHECKING:
    from http.client import HTTPConnection

API_PATH = "/2020-01-01/extension"
TIMEOUT_S = 0.5  # a Runtime API that does not answer costs init at most this


def _connection(api: str) -> HTTPConnection:
    from http.client import HTTPConnection

    host, _, port = api.rpartition(":")
    return HTTPConnection(host or "127.0.0.1", int(port), timeout=TIMEOUT_S)


def register_without_events(api: str, name: str) -> str:
    """Register the internal extension `name` with no events at the Runtime API `api`
    (`host:port`), and ask for its next event on a daemon thread; returns its identifier.
    Raises OSError when the API refuses or does not answer."""
    conn = _connection(api)
    try:
        conn.request(
            "POST",
            f"{API_PATH}/register",
            body=b'{"events":[]}',
            headers={"Lambda-Extension-Name": name, "Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        reply.read()
        status, identifier = reply.status, reply.getheader("Lambda-Extension-Identifier")
    finally:
        conn.close()
    if status != 200 or not identifier:
        raise OSError(f"extension registration answered HTTP {status}")
    start_daemon(f"extension-{name}", _wait_for_no_event, api, identifier)
    return identifier


def _wait_for_no_event(api: str, identifier: str) -> None:
    waiting = _connection(api)
    try:
        waiting.connect()
        assert waiting.sock is not None
        waiting.sock.settimeout(None)  # the event never comes: wait as long as we live
        waiting.request(
            "GET", f"{API_PATH}/event/next", headers={"Lambda-Extension-Identifier": identifier}
        )
        waiting.getresponse().read()
    except Exception:  # the Runtime API went away: nothing to wait for
        pass
    finally:
        waiting.close()
