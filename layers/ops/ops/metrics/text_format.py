"""The exposition's spellings, in one place: label sets, bucket bounds and sample values
as the Prometheus text format 0.0.4 and OpenMetrics 1.0.0 write them.

The write side uses them too: a series is stored under its label set as rendered here,
so a scrape joins strings instead of formatting each sample again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_bound(bound: float) -> str:
    """A bucket bound as Prometheus clients render `le` (Go's float formatting)."""
    if bound == math.inf:
        return "+Inf"
    text = repr(float(bound))
    dot = text.find(".")
    if bound > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def escape_label_value(value: str) -> str:
    # The same three escapes in the text format 0.0.4 and in OpenMetrics 1.0.0.
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def format_labels(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


def format_value(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if openmetrics else text
