"""The running invocation's deadline (Lambda's context), for work that must end before it.

ops.wiring sets it before each invocation and clears it after; ops.checks shrinks a
check's budget to fit (ops.checks.ANSWER_MARGIN_S before it), and the metrics deadline
watch (ops.metrics.process_hooks) reads the same context. Outside an invocation (a test
calling a handler directly, a function not built on ops.api) there is none.
"""

from __future__ import annotations

import time
from typing import Any

_deadline: float | None = None  # monotonic


def from_context(context: Any) -> float | None:
    """Monotonic time of the context's deadline (None: the context does not say)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining):
        return None
    try:
        return time.monotonic() + float(remaining()) / 1000.0
    except (TypeError, ValueError):
        return None


def begin(context: Any) -> None:
    global _deadline
    _deadline = from_context(context)


def end() -> None:
    global _deadline
    _deadline = None


def remaining_s() -> float | None:
    """Seconds left in the running invocation (None: no deadline known)."""
    return None if _deadline is None else _deadline - time.monotonic()
