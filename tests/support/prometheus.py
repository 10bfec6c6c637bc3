"""The real Prometheus and local gateway of tools.localprom, for tests: Prometheus missing
fails in CI and skips elsewhere (tests.support.binaries)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tests.support.binaries import require_binary
from tools.localprom import Prometheus, get, local_gateway
from tools.localprom import prometheus as start_prometheus

__all__ = ["Prometheus", "get", "local_gateway", "prometheus"]


@contextmanager
def prometheus(
    scrape_configs: list[dict[str, Any]],
    rules: Mapping[str, Any] | None = None,
    interval: str = "1s",
) -> Iterator[Prometheus]:
    with start_prometheus(require_binary("prometheus"), scrape_configs, rules, interval) as server:
        yield server
