"""Counters, histograms and gauges in the style of `prometheus_client`, recording deltas.

A Lambda container's totals are meaningless on their own (each scrape would land
on a random container), so nothing here is ever rendered directly. Each family
records what happened since the last flush, keyed by series; `take_deltas()`
hands that to the store, which adds it to the totals in PostgreSQL. What is
recorded for CloudWatch (EMF) is kept apart, because it is emitted on every
flush whether or not the database took the deltas.

Label values are validated when a child is first made, and children are cached,
so the steady-state cost of `m.X.labels(a="b").inc()` is two dict lookups and a
lock. Pure standard library: every function imports this on its hot path.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, NamedTuple, TypeVar

from ops.metrics.text_format import format_bound, format_labels

MAX_LABEL_VALUE_LENGTH = 128


class SeriesKey(NamedTuple):
    """One stored series (a row of metric_series)."""

    family: str
    labels: str  # rendered as in the exposition: `method="GET",route="/health"`
    part: str  # "" for a counter or gauge value, "sum", or a bucket's `le` ("10.0", "+Inf")


class EmfKey(NamedTuple):
    """One CloudWatch metric of a flush's EMF lines."""

    name: str
    unit: str
    dimension: str  # the extra dimension's name, "" when there is none
    value: str  # its value, "" when there is none


COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


class Emf:
    """How a family is mirrored to CloudWatch (EMF). Dimensions must stay bounded.

    `name` may use the family's labels (`retention_runs_{status}`) when those
    label values are a closed set, or be chosen from the labels by `name_of`
    (one of `names`); `dimension` derives one extra dimension from the labels;
    `value` maps a gauge reading to the emitted value.
    """

    __slots__ = ("dimension", "name", "name_of", "names", "unit", "value")

    def __init__(
        self,
        name: str,
        unit: str,
        dimension: tuple[str, Callable[[Mapping[str, str]], str]] | None = None,
        value: Callable[[float], float] | None = None,
        name_of: tuple[tuple[str, ...], Callable[[Mapping[str, str]], str]] | None = None,
    ) -> None:
        self.name = name
        self.unit = unit
        self.dimension = dimension
        self.value = value
        self.names: tuple[str, ...] = name_of[0] if name_of else (name,)
        self.name_of: Callable[[Mapping[str, str]], str] | None = name_of[1] if name_of else None

    def key(self, labels: Mapping[str, str]) -> EmfKey:
        if self.name_of is not None:
            name = self.name_of(labels)
        else:
            name = self.name.format(**labels) if "{" in self.name else self.name
        if self.dimension is None:
            return EmfKey(name, self.unit, "", "")
        dim_name, derive = self.dimension
        return EmfKey(name, self.unit, dim_name, derive(labels))


class _Recordings:
    """Everything recorded since the last flush (deltas) or EMF emission."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sums: dict[SeriesKey, float] = {}
        self.gauges: dict[SeriesKey, tuple[float, float]] = {}  # value, when (newest wins)
        self.since: float | None = None  # monotonic time of the oldest delta not yet taken
        # Counters and gauges: one summed value per flush; histograms: every observation.
        self.emf: dict[EmfKey, list[float]] = {}

    def add(self, key: SeriesKey, amount: float, emf: EmfKey | None) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
            self.sums[key] = self.sums.get(key, 0.0) + amount
            if emf is not None:
                self._emf_add(emf, amount)

    def observe(self, keys: tuple[SeriesKey, SeriesKey], value: float, emf: EmfKey | None) -> None:
        bucket, total = keys
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
            sums = self.sums
            sums[bucket] = sums.get(bucket, 0.0) + 1.0
            sums[total] = sums.get(total, 0.0) + value
            if emf is not None:
                self.emf.setdefault(emf, []).append(value)

    def set(self, key: SeriesKey, value: float, emf: EmfKey | None, emf_value: float) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
            self.gauges[key] = (value, time.time())
            if emf is not None:
                self._emf_add(emf, emf_value)

    def _emf_add(self, emf: EmfKey, amount: float) -> None:
        values = self.emf.get(emf)
        if values is None:
            self.emf[emf] = [amount]
        else:
            values[0] += amount


class Deltas:
    """What a container recorded between two flushes."""

    __slots__ = ("gauges", "since", "sums")

    def __init__(
        self,
        sums: dict[SeriesKey, float],
        gauges: dict[SeriesKey, tuple[float, float]],
        since: float | None = None,
    ) -> None:
        self.sums = sums
        self.gauges = gauges
        self.since = since  # monotonic time of the oldest delta in here

    def __bool__(self) -> bool:
        return bool(self.sums or self.gauges)


_recordings = _Recordings()


def take_deltas() -> Deltas:
    """Hand over the series deltas recorded so far and start afresh."""
    r = _recordings
    with r.lock:
        deltas = Deltas(r.sums, r.gauges, r.since)
        r.sums, r.gauges, r.since = {}, {}, None
    return deltas


def pending_since() -> float | None:
    """Monotonic time of the oldest delta recorded and not yet handed to the store."""
    return _recordings.since


def take_emf() -> dict[EmfKey, list[float]]:
    r = _recordings
    with r.lock:
        emf, r.emf = r.emf, {}
    return emf


def reset() -> None:
    """Forget everything recorded (a new container; tests)."""
    global _recordings
    _recordings = _Recordings()


REGISTRY: dict[str, Family[Any]] = {}
_MISSING = object()
C = TypeVar("C")


class Family(Generic[C]):
    kind: str = ""
    live = False  # computed at scrape time rather than recorded

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        allowed: Mapping[str, Sequence[str]] | None = None,
        emf: Emf | None = None,
        registry: dict[str, Family[Any]] | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.allowed = {k: frozenset(v) for k, v in (allowed or {}).items()}
        self.emf = emf
        self._children: dict[tuple[Any, ...], C] = {}
        unknown = set(self.allowed) - set(self.labelnames)
        if unknown:
            raise ValueError(f"{name}: allowed values given for unknown labels {sorted(unknown)}")
        if registry is not None:
            if name in registry:
                raise ValueError(f"metric family {name} is already defined")
            registry[name] = self

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
        _recordings.add(self._key, amount, self._emf)


class Histogram(Family["HistogramChild"]):
    kind = HISTOGRAM

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        unit: str,
        **kwargs: Any,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)) or not all(map(math.isfinite, bounds)):
            raise ValueError(f"{name}: buckets must be finite, increasing and distinct")
        if unit not in ("ms", "s"):
            raise ValueError(f"{name}: unit must be 'ms' or 's'")
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for buckets")
        super().__init__(name, documentation, labelnames, **kwargs)
        self.bounds = tuple(bounds)
        self.bucket_parts = (*(format_bound(b) for b in bounds), "+Inf")
        self.part_index = {part: i for i, part in enumerate(self.bucket_parts)}
        self.unit = unit

    def _make_child(self, values: tuple[str, ...]) -> HistogramChild:
        return HistogramChild(self, format_labels(self.labelnames, values), self._emf_key(values))

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def time(self) -> AbstractContextManager[None]:
        return self._unlabelled().time()


class HistogramChild:
    __slots__ = ("_bounds", "_emf", "_family", "_keys", "_scale")

    def __init__(self, family: Histogram, labels: str, emf: EmfKey | None) -> None:
        self._family = family.name
        self._bounds = family.bounds
        total = SeriesKey(family.name, labels, "sum")
        # One (bucket, sum) key pair per bucket: observe() does no string work.
        self._keys = tuple(
            (SeriesKey(family.name, labels, part), total) for part in family.bucket_parts
        )
        self._emf = emf
        self._scale = 1000.0 if family.unit == "ms" else 1.0

    def observe(self, value: float) -> None:
        value = _finite(self._family, value)
        # Buckets are upper-inclusive (le): bisect_left puts a value equal to a bound in it.
        _recordings.observe(self._keys[bisect_left(self._bounds, value)], value, self._emf)

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the duration of the `with` block, in the family's unit."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe((time.perf_counter() - started) * self._scale)


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
        _recordings.set(self._key, value, self._emf, emf_value)


class LiveGauge(Family[str]):
    """A gauge the metrics function computes from the database at scrape time.

    Declared here so that the catalogue lists every family exposed; never recorded.
    """

    kind = GAUGE
    live = True

    def _make_child(self, values: tuple[str, ...]) -> str:
        return format_labels(self.labelnames, values)
