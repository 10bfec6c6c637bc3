"""Counters, histograms and gauges in the style of `prometheus_client`: what code records with.

The product's families are declared in ops.metrics.catalogue; a team declares its own
with the same classes in its own code (`from ops.metrics import Counter`). One name,
one shape: a second declaration of a name fails here, naming the family (the
catalogue's names are reserved, loaded before any team's); across functions the
store refuses a name declared with another shape (ops.metrics.store). A family's
children add to the active container's pending deltas (`ops.metrics.container.current()`,
ops.metrics.pending), never to a total of their own: the totals live in PostgreSQL.

Label values are validated when a child is first made, and children are cached,
so the steady-state cost of `m.X.labels(a="b").inc()` is two dict lookups, a
context variable and a lock. Pure standard library: every function imports this on its hot path.
"""

from __future__ import annotations

import math
import re
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

from ops.metrics.container import current
from ops.metrics.emf import Emf, EmfKey
from ops.metrics.pending import SeriesKey
from ops.metrics.text_format import format_bound, format_labels

MAX_LABEL_VALUE_LENGTH = 128
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

REGISTRY: dict[str, Family[Any]] = {}
# The catalogue's names, once it is loaded: REGISTRY's other families are a team's own,
# declared to the store by their first flush (ops.metrics.store) and exposed from there.
RESERVED: frozenset[str] | None = None
_MISSING = object()
_DEFAULT_EMF: Any = object()  # a team's family: mirrored under its own name (team_emf)
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
C = TypeVar("C")

Shape = tuple[str, str, tuple[str, ...], tuple[float, ...]]  # kind, help, labels, buckets


def reserve_catalogue() -> None:
    """Called at the end of ops.metrics.catalogue: its names are reserved from now on."""
    global RESERVED
    RESERVED = frozenset(REGISTRY)


def _load_catalogue() -> None:
    """The catalogue's names are taken before a team's first declaration."""
    if RESERVED is None and "ops.metrics.catalogue" not in sys.modules:
        import ops.metrics.catalogue  # noqa: F401 - declares (and reserves) its families


def shape_rows(declared: Iterable[Family[Any]]) -> list[dict[str, Any]]:
    """Families' shapes as metrics_declare() and metrics_reserve() take them (migrations/009)."""
    rows = []
    for family in sorted(declared, key=lambda f: f.name):
        kind, help_text, labels, buckets = family.shape()
        rows.append(
            {"family": family.name, "kind": kind, "help": help_text, "labels": labels}
            | {"buckets": buckets}
        )
    return rows


def describe(shape: Shape) -> str:
    kind, _, labels, buckets = shape
    return f"{kind} with labels {list(labels)}" + (
        f" and buckets {list(buckets)}" if buckets else ""
    )


class Family(Generic[C]):
    kind: str = ""
    live = False  # computed at scrape time rather than recorded
    bounds: tuple[float, ...] = ()  # a histogram's bucket bounds
    team = False  # declared in a team's code, not the catalogue: its shape goes to the store

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        allowed: Mapping[str, Sequence[str]] | None = None,
        emf: Emf | None = _DEFAULT_EMF,
        registry: dict[str, Family[Any]] | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.allowed = {k: frozenset(v) for k, v in (allowed or {}).items()}
        self._children: dict[tuple[Any, ...], C] = {}
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"metric family name {name!r} is not a Prometheus metric name")
        if not isinstance(documentation, str) or not documentation.strip():
            raise ValueError(f"{name}: the help text must be a non-empty string")
        for label in self.labelnames:
            if not isinstance(label, str) or not _LABEL_NAME.match(label) or label[:2] == "__":
                raise ValueError(f"{name}: {label!r} is not a Prometheus label name")
        if len(set(self.labelnames)) != len(self.labelnames):
            raise ValueError(f"{name}: label names repeat: {list(self.labelnames)}")
        unknown = set(self.allowed) - set(self.labelnames)
        if unknown:
            raise ValueError(f"{name}: allowed values given for unknown labels {sorted(unknown)}")
        if registry is REGISTRY:
            _load_catalogue()
            self.team = RESERVED is not None
        if emf is _DEFAULT_EMF:
            emf = team_emf(self) if self.team else None
        self.emf = emf
        if registry is not None:
            other = registry.get(name)
            if other is not None:
                raise ValueError(_redeclared(other, self))
            registry[name] = self

    def shape(self) -> Shape:
        """What must agree wherever the name is declared (ops.metrics.store checks it too)."""
        return (self.kind, self.documentation, self.labelnames, self.bounds)

    def labels(self, *values: Any, **kwvalues: Any) -> C:
        """The child for one label set; label names and values are checked on first use."""
        if values and kwvalues:
            raise ValueError(f"{self.name}: pass label values by name or by position, not both")
        key: tuple[Any, ...] | None = values
        if kwvalues:
            same_count = len(kwvalues) == len(self.labelnames)
            key = tuple(kwvalues.get(n, _MISSING) for n in self.labelnames) if same_count else None
        if key is not None:
            try:
                child = self._children.get(key)
            except TypeError:  # an unhashable value: validation says what is wrong with it
                child = None
            if child is not None:
                return child
        ordered = self._ordered(kwvalues) if kwvalues else values
        child = self._make_child(self._validate(ordered))
        self._children[tuple(ordered)] = child
        return child

    def _ordered(self, kwvalues: Mapping[str, Any]) -> tuple[Any, ...]:
        unknown = sorted(set(kwvalues) - set(self.labelnames))
        missing = [n for n in self.labelnames if n not in kwvalues]
        if unknown or missing:
            raise ValueError(
                f"{self.name}: labels must be exactly {list(self.labelnames)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        return tuple(kwvalues[n] for n in self.labelnames)

    def _validate(self, values: Sequence[Any]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"{self.name}: expected {len(self.labelnames)} label values "
                f"{list(self.labelnames)}, got {len(values)}"
            )
        clean = []
        for name, value in zip(self.labelnames, values, strict=True):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"{self.name}: label {name} must be a string, got {value!r}")
            text = str(value)
            if not text or len(text) > MAX_LABEL_VALUE_LENGTH:
                raise ValueError(
                    f"{self.name}: label {name} must be 1 to {MAX_LABEL_VALUE_LENGTH} "
                    f"characters, got {len(text)}"
                )
            if "\x00" in text or not _encodes(text):
                # PostgreSQL text cannot hold either: a flush carrying it would never succeed.
                raise ValueError(f"{self.name}: label {name} contains a NUL or is not UTF-8")
            allowed = self.allowed.get(name)
            if allowed is not None and text not in allowed:
                raise ValueError(
                    f"{self.name}: label {name} must be one of {sorted(allowed)}, got {text!r}"
                )
            clean.append(text)
        return tuple(clean)

    def _make_child(self, values: tuple[str, ...]) -> C:
        raise NotImplementedError

    def _emf_key(self, values: tuple[str, ...]) -> EmfKey | None:
        if self.emf is None:
            return None
        return self.emf.key(dict(zip(self.labelnames, values, strict=True)))

    def _unlabelled(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: use .labels(...)")
        return self.labels()


def _redeclared(old: Family[Any], new: Family[Any]) -> str:
    reserved = old.name in (RESERVED or ()) and not old.team
    where = " by the catalogue (ops.metrics.catalogue: its names are reserved)" if reserved else ""
    if old.shape() == new.shape():
        return f"metric family {old.name} is already defined{where}: declare it once and import it"
    if old.shape()[0::2] == new.shape()[0::2] and old.bounds == new.bounds:
        diff = "another help text"
    else:
        diff = describe(new.shape())
    return (
        f"metric family {old.name} is already defined{where} as {describe(old.shape())};"
        f" this declaration has {diff}: one name, one shape"
    )


def team_emf(family: Family[Any]) -> Emf:
    """A team's family in CloudWatch: its own metric name, the `service` dimension only
    (labels are not dimensions: each value would be a billed metric of its own)."""
    if family.kind == COUNTER:
        return Emf(family.name[: -len("_total")], "Count")
    if family.kind == HISTOGRAM:
        return Emf(family.name, "Seconds" if family.name.endswith("_seconds") else "None")
    return Emf(family.name, "None")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")  # lone surrogates do not
    except UnicodeEncodeError:
        return False
    return True


def _finite(family: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{family}: value must be finite, got {value!r}")
    return value


class Counter(Family["CounterChild"]):
    kind = COUNTER

    def __init__(self, name: str, documentation: str, *args: Any, **kwargs: Any) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        super().__init__(name, documentation, *args, **kwargs)

    def _make_child(self, values: tuple[str, ...]) -> CounterChild:
        labels = format_labels(self.labelnames, values)
        return CounterChild(self.name, labels, self._emf_key(values))

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class CounterChild:
    __slots__ = ("_emf", "_family", "_key")

    def __init__(self, family: str, labels: str, emf: EmfKey | None) -> None:
        self._family = family
        self._key = SeriesKey(family, labels, "")
        self._emf = emf

    def inc(self, amount: float = 1.0) -> None:
        amount = _finite(self._family, amount)
        if amount < 0:
            raise ValueError(f"{self._family}: counters only go up (got {amount})")
        current().pending.add(self._key, amount, self._emf)


class Histogram(Family["HistogramChild"]):
    kind = HISTOGRAM

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        **kwargs: Any,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)) or not all(map(math.isfinite, bounds)):
            raise ValueError(f"{name}: buckets must be finite, increasing and distinct")
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for buckets")
        self.bounds = tuple(bounds)  # before registering: part of the shape
        super().__init__(name, documentation, labelnames, **kwargs)
        self.bucket_parts = (*(format_bound(b) for b in bounds), "+Inf")
        self.part_index = {part: i for i, part in enumerate(self.bucket_parts)}

    def _make_child(self, values: tuple[str, ...]) -> HistogramChild:
        return HistogramChild(self, format_labels(self.labelnames, values), self._emf_key(values))

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def time(self) -> AbstractContextManager[None]:
        return self._unlabelled().time()


class HistogramChild:
    __slots__ = ("_bounds", "_emf", "_family", "_keys")

    def __init__(self, family: Histogram, labels: str, emf: EmfKey | None) -> None:
        self._family = family.name
        self._bounds = family.bounds
        total = SeriesKey(family.name, labels, "sum")
        # One (bucket, sum) key pair per bucket: observe() does no string work.
        self._keys = tuple(
            (SeriesKey(family.name, labels, part), total) for part in family.bucket_parts
        )
        self._emf = emf

    def observe(self, value: float) -> None:
        value = _finite(self._family, value)
        # Buckets are upper-inclusive (le): bisect_left puts a value equal to a bound in it.
        current().pending.observe(self._keys[bisect_left(self._bounds, value)], value, self._emf)

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the duration of the `with` block, in seconds (durations are in base units)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started)


class Gauge(Family["GaugeChild"]):
    """A recorded gauge: across containers the most recent value wins."""

    kind = GAUGE

    def _make_child(self, values: tuple[str, ...]) -> GaugeChild:
        return GaugeChild(
            self.name,
            format_labels(self.labelnames, values),
            self._emf_key(values),
            self.emf.value if self.emf else None,
        )

    def set(self, value: float) -> None:
        self._unlabelled().set(value)


class GaugeChild:
    __slots__ = ("_emf", "_emf_value", "_family", "_key")

    def __init__(
        self,
        family: str,
        labels: str,
        emf: EmfKey | None,
        emf_value: Callable[[float], float] | None,
    ) -> None:
        self._family = family
        self._key = SeriesKey(family, labels, "")
        self._emf = emf
        self._emf_value = emf_value

    def set(self, value: float) -> None:
        value = _finite(self._family, value)
        emf_value = self._emf_value(value) if self._emf_value else value
        current().pending.set(self._key, value, self._emf, emf_value)


class LiveGauge(Family[str]):
    """A gauge the metrics function computes from the database at scrape time.

    Declared here so that the catalogue lists every family exposed; never recorded.
    """

    kind = GAUGE
    live = True

    def _make_child(self, values: tuple[str, ...]) -> str:
        return format_labels(self.labelnames, values)


class LiveCounter(LiveGauge):
    """A counter the database keeps (pg_stat_database's commits, say), read at scrape time.

    Exposed with TYPE counter: it only goes down when the server's statistics are reset
    (pg_stat_reset, a crash), which Prometheus reads as a counter reset.
    """

    kind = COUNTER

    def __init__(self, name: str, documentation: str, *args: Any, **kwargs: Any) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        super().__init__(name, documentation, *args, **kwargs)
