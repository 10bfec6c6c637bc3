"""The real Prometheus and local gateway of tools.standins.prometheus, for tests: Prometheus missing
fails in CI and skips elsewhere (tests.support.binaries)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import yaml

from tests.support.binaries import require_binary
from tools import ROOT
from tools.standins.prometheus import Prometheus, get, local_gateway
from tools.standins.prometheus import prometheus as start_prometheus

__all__ = ["Prometheus", "get", "local_gateway", "prometheus", "shipped_alert_rules"]


@contextmanager
def prometheus(
    scrape_configs: list[dict[str, Any]],
    rules: Mapping[str, Any] | None = None,
    interval: str = "1s",
) -> Iterator[Prometheus]:
    with start_prometheus(require_binary("prometheus"), scrape_configs, rules, interval) as server:
        yield server


def shipped_alert_rules(for_: str = "2s") -> dict[str, Any]:
    """alerts.yml as shipped, every `for:` cut to `for_` (a test's clock runs in seconds)."""
    rules = copy.deepcopy(yaml.safe_load((ROOT / "infra/monitoring/alerts.yml").read_text()))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    return dict(rules)
