"""Exposition: the Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when asked for.

Written by hand rather than through a prometheus_client custom collector: the totals
arrive already summed and with their label sets rendered, so rendering is string
joins, a fraction of what `generate_latest` spends per sample, without
prometheus_client's import in the metrics function's cold start (both measured:
benchmarks/README.md, suite libraries).
Every catalogue family gets `# HELP` and `# TYPE`, even before it has samples;
histograms get every catalogue bucket, cumulative, then `_count` and `_sum`. The
families teams declared in their own functions follow, as stored (`stored`: their
names, help, labels and buckets from ops.metrics.totals), after the catalogue's.
When the store could not be read (`totals` None) the recorded families have no
samples at all, never a made-up zero: a counter that went to 0 and back would
read as a reset, and rate() would count its whole value again.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ops.metrics.families import COUNTER, GAUGE, REGISTRY, Family, Histogram
from ops.metrics.text_format import escape_help, format_value

if TYPE_CHECKING:
    from ops.metrics.totals import Totals  # read from PostgreSQL by ops.metrics.totals

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# family -> [(rendered labels, value)] for the gauges computed at scrape time
Live = Mapping[str, Sequence[tuple[str, float]]]


def _split_unquoted(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside double-quoted strings (which may escape with `\\`)."""
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])  # a quoted-pair stands for its character
    return value


def wants_openmetrics(accept: str | None) -> bool:
    """True when the Accept header ranks OpenMetrics 1.0.0 at least as high as plain text.

    Media types and parameter names in any case, whitespace around separators, and
    parameter values quoted or not (`version="1.0.0"`), as RFC 9110 allows."""
    openmetrics = text = 0.0
    for item in _split_unquoted(accept or "", ","):
        media, *params = (p.strip() for p in _split_unquoted(item, ";"))
        q, version = 1.0, None
        for param in params:
            key, _, value = param.partition("=")
            key = key.strip().lower()
            if key == "q":
                try:
                    q = float(_unquote(value))
                except ValueError:
                    q = 0.0
            elif key == "version":
                version = _unquote(value)
        media = media.lower()
        if media == "application/openmetrics-text" and version in (None, "1.0.0"):
            openmetrics = max(openmetrics, q)
        elif media in ("text/plain", "text/*", "*/*"):
            text = max(text, q)
    return openmetrics > 0 and openmetrics >= text


def _bucket_counts(family: Histogram, parts: Mapping[str, float]) -> list[float]:
    """Per-bucket counts in catalogue order. A stored bound the catalogue no longer has
    folds into the next larger bucket, which is still a true upper bound for it."""
    counts = [0.0] * len(family.bucket_parts)
    index = family.part_index
    for part, value in parts.items():
        i = index.get(part)
        if i is None:
            if part == "sum":
                continue
            try:
                i = bisect_left(family.bounds, float(part))
            except ValueError:
                continue  # not a bucket (the family changed type): nothing to add
        counts[i] += value
    return counts


def _histogram(out: list[str], family: Histogram, rows: Iterable[tuple[str, Any]]) -> None:
    name = family.name
    fmt = format_value
    for labels, parts in rows:
        prefix = f'{name}_bucket{{{labels},le="' if labels else f'{name}_bucket{{le="'
        cumulative = 0.0
        for part, count in zip(family.bucket_parts, _bucket_counts(family, parts), strict=True):
            cumulative += count
            out.append(f'{prefix}{part}"}} {fmt(cumulative)}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_count{braces} {fmt(cumulative)}")
        out.append(f"{name}_sum{braces} {fmt(parts.get('sum', 0.0))}")


def render(
    totals: Totals | None,
    live: Live,
    *,
    openmetrics: bool,
    families: Iterable[Family[Any]] | None = None,
    stored: Iterable[Family[Any]] = (),
) -> str:
    """The whole exposition. `families` defaults to the catalogue, in its order; then
    the `stored` families this process does not declare itself."""
    out: list[str] = []
    fmt = format_value
    own = REGISTRY if families is None else {f.name: f for f in families}
    team = [f for f in stored if f.name not in own]
    for family in (*own.values(), *team):
        name = family.name
        # OpenMetrics names a counter family without `_total`; its samples keep it.
        meta = name[: -len("_total")] if openmetrics and family.kind == COUNTER else name
        out.append(f"# HELP {meta} {escape_help(family.documentation, openmetrics)}")
        out.append(f"# TYPE {meta} {family.kind}")
        if family.live:
            for labels, value in live.get(name, ()):
                out.append(f"{name}{{{labels}}} {fmt(value)}" if labels else f"{name} {fmt(value)}")
            continue
        if totals is None:
            continue
        rows: Iterable[tuple[str, Mapping[str, float]]] = totals.get(name, ())
        if not rows and not family.labelnames and family.kind != GAUGE:
            rows = [("", {})]  # an unlabelled counter or histogram is exposed from zero
        if isinstance(family, Histogram):
            _histogram(out, family, rows)
            continue
        for labels, parts in rows:
            text = fmt(parts.get("", 0.0))
            out.append(f"{name}{{{labels}}} {text}" if labels else f"{name} {text}")
    if openmetrics:
        out.append("# EOF")
    out.append("")
    return "\n".join(out)
