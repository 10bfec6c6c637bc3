"""A small interpreter for the subset of CloudWatch Logs Insights our saved queries use.

It runs a query's filter/stats/sort/limit logic over log events so that tests can
check the template's queries against the JSON lines the handlers really emit.
Anything outside the subset raises `Unsupported`, so a query edited to use a
command or function this file does not model fails its test instead of being
half-evaluated.

Supported: `#` comments; `fields a, b`; `filter` with `=`, `!=`, `<`, `<=`, `>`,
`>=`, `like "text"` / `like /regex/`, `in [...]`, `not`, `and`, `or`, parentheses,
`ispresent(f)`; `stats` with count(*), count(f), count_distinct(f), sum, avg, min,
max, pct(f, n), latest(f), earliest(f), each optionally `as alias`, grouped `by`
fields or `bin(<n><unit>)` (optionally aliased); `sort f asc|desc`; `limit n`.

Semantics modelled on Logs Insights: nested JSON keys are flattened with dots,
JSON booleans read as 1/0, a comparison with a missing field is false, `like`
with a string is a substring match, `pct` is the nearest-rank percentile.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

Event = dict[str, Any]
Row = dict[str, Any]


class Unsupported(ValueError):
    """The query uses syntax this interpreter does not model."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<regex>/(?:[^/\\\n]|\\.)+/)
  | (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
  | (?P<duration>\d+(?:ms|s|m|h|d|w)\b)
  | (?P<ident>`[^`]+`|@?[A-Za-z_][\w.@]*)
  | (?P<op><=|>=|!=|=|<|>|\(|\)|\[|\]|,|\*|\|)
    """,
    re.VERBOSE,
)

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_KEYWORDS = {"and", "or", "not", "in", "like", "as", "by", "asc", "desc"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str

    def is_op(self, *ops: str) -> bool:
        return self.kind == "op" and self.text in ops

    def is_word(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.lower() in words


def tokenize(query: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(query):
        match = _TOKEN.match(query, pos)
        if match is None:
            raise Unsupported(f"cannot read {query[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, match.group()))
        pos = match.end()
    return tokens


def _field_name(token: Token) -> str:
    if token.kind != "ident" or token.text.lower() in _KEYWORDS:
        raise Unsupported(f"expected a field name, got {token.text!r}")
    return token.text.strip("`")


def _literal(token: Token) -> Any:
    if token.kind == "string":
        return ast.literal_eval(token.text)
    if token.kind == "number":
        value = float(token.text)
        return int(value) if value.is_integer() else value
    raise Unsupported(f"expected a literal, got {token.text!r}")


class _Cursor:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise Unsupported("unexpected end of command")
        self.i += 1
        return token

    def expect_op(self, op: str) -> None:
        token = self.take()
        if not token.is_op(op):
            raise Unsupported(f"expected {op!r}, got {token.text!r}")

    def done(self) -> bool:
        return self.i >= len(self.tokens)


# --- filter expressions -------------------------------------------------------

Predicate = Callable[[Event], bool]


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    if isinstance(left, str) and isinstance(right, str):
        return _ordered(op, left, right)
    # a number against anything compares numerically
    x, y = _number(left), _number(right)
    if x is None or y is None:
        return op == "!="
    return _ordered(op, x, y)


_Ordered = TypeVar("_Ordered", str, float)


def _ordered(op: str, left: _Ordered, right: _Ordered) -> bool:
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


def _parse_or(cur: _Cursor) -> Predicate:
    parts = [_parse_and(cur)]
    while (token := cur.peek()) is not None and token.is_word("or"):
        cur.take()
        parts.append(_parse_and(cur))
    return parts[0] if len(parts) == 1 else lambda e: any(p(e) for p in parts)


def _parse_and(cur: _Cursor) -> Predicate:
    parts = [_parse_not(cur)]
    while (token := cur.peek()) is not None and token.is_word("and"):
        cur.take()
        parts.append(_parse_not(cur))
    return parts[0] if len(parts) == 1 else lambda e: all(p(e) for p in parts)


def _parse_not(cur: _Cursor) -> Predicate:
    token = cur.peek()
    if token is not None and token.is_word("not"):
        cur.take()
        inner = _parse_not(cur)
        return lambda e: not inner(e)
    return _parse_comparison(cur)


def _parse_list(cur: _Cursor) -> list[Any]:
    cur.expect_op("[")
    values = [_literal(cur.take())]
    while (nxt := cur.peek()) is not None and nxt.is_op(","):
        cur.take()
        values.append(_literal(cur.take()))
    cur.expect_op("]")
    return values


def _parse_comparison(cur: _Cursor) -> Predicate:
    token = cur.take()
    if token.is_op("("):
        inner = _parse_or(cur)
        cur.expect_op(")")
        return inner
    if token.is_word("ispresent"):
        cur.expect_op("(")
        name = _field_name(cur.take())
        cur.expect_op(")")
        return lambda e: e.get(name) is not None
    name = _field_name(token)
    if (nxt := cur.peek()) is not None and nxt.is_op("("):
        raise Unsupported(f"function {name}() is not modelled")
    op = cur.take()
    negate = op.is_word("not")
    if negate:
        op = cur.take()
    matches: Callable[[Any], bool]
    if op.is_word("in"):
        values = _parse_list(cur)

        def matches(v: Any) -> bool:
            return any(_compare("=", v, x) for x in values)

    elif op.is_word("like"):
        pattern = cur.take()
        if pattern.kind == "regex":
            rx = re.compile(pattern.text[1:-1])
        elif pattern.kind == "string":
            rx = re.compile(re.escape(_literal(pattern)))
        else:
            raise Unsupported(f"like needs a string or /regex/, got {pattern.text!r}")

        def matches(v: Any) -> bool:
            return isinstance(v, str) and rx.search(v) is not None

    elif op.kind == "op" and op.text in ("=", "!=", "<", "<=", ">", ">=") and not negate:
        operator, value = op.text, _literal(cur.take())

        def matches(v: Any) -> bool:
            return _compare(operator, v, value)

    else:
        raise Unsupported(f"operator {op.text!r} is not modelled")
    if negate:
        return lambda e: e.get(name) is not None and not matches(e.get(name))
    return lambda e: matches(e.get(name))


# --- stats ----------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


_AGGREGATES: dict[str, Callable[..., Any]] = {
    "count": lambda vals, _events: len(vals),
    "count_distinct": lambda vals, _events: len(set(vals)),
    "sum": lambda vals, _events: sum(vals) if vals else None,
    "avg": lambda vals, _events: sum(vals) / len(vals) if vals else None,
    "min": lambda vals, _events: min(vals) if vals else None,
    "max": lambda vals, _events: max(vals) if vals else None,
    # The field's value in the group's last (first) event by @timestamp that has it.
    "latest": lambda _vals, events: events[-1] if events else None,
    "earliest": lambda _vals, events: events[0] if events else None,
}
_NUMERIC = {"sum", "avg", "min", "max", "pct"}


@dataclass(frozen=True)
class _Aggregate:
    func: str
    field: str | None  # None: count(*)
    arg: float | None
    alias: str

    def apply(self, events: list[Event]) -> Any:
        if self.field is None:
            return len(events)
        values = [e[self.field] for e in events if e.get(self.field) is not None]
        if self.func in _NUMERIC:
            values = [v for v in (_number(v) for v in values) if v is not None]
        if self.func == "pct":
            return _pct(values, float(self.arg or 0)) if values else None
        if self.func in ("latest", "earliest"):
            having = [e for e in events if e.get(self.field) is not None]
            having.sort(key=lambda e: e.get("@timestamp") or 0)
            return _AGGREGATES[self.func](values, [e[self.field] for e in having])
        return _AGGREGATES[self.func](values, events)


@dataclass(frozen=True)
class _GroupKey:
    field: str | None  # None: bin() over @timestamp
    bin_ms: int | None
    alias: str

    def value(self, event: Event) -> Any:
        if self.bin_ms is None:
            return event.get(self.field or "")
        ts = event.get("@timestamp")
        return None if ts is None else int(ts) // self.bin_ms * self.bin_ms


def _alias(cur: _Cursor, default: str) -> str:
    token = cur.peek()
    if token is not None and token.is_word("as"):
        cur.take()
        return _field_name(cur.take())
    return default


def _parse_aggregate(cur: _Cursor) -> _Aggregate:
    func = cur.take().text.lower()
    if func not in (*_AGGREGATES, "pct"):
        raise Unsupported(f"stats function {func}() is not modelled")
    cur.expect_op("(")
    arg: float | None = None
    if (nxt := cur.peek()) is not None and nxt.is_op("*"):
        if func != "count":
            raise Unsupported(f"{func}(*) is not modelled")
        cur.take()
        field = None
    else:
        field = _field_name(cur.take())
    if func == "pct":
        cur.expect_op(",")
        arg = float(_literal(cur.take()))
    cur.expect_op(")")
    source = f"{func}({field or '*'}{'' if arg is None else f', {arg:g}'})"
    return _Aggregate(func, field, arg, _alias(cur, source))


def _parse_group(cur: _Cursor) -> _GroupKey:
    token = cur.take()
    if token.is_word("bin"):
        cur.expect_op("(")
        span = cur.take()
        if span.kind != "duration":
            raise Unsupported(f"bin() needs a duration like 1h, got {span.text!r}")
        cur.expect_op(")")
        unit = span.text.lstrip("0123456789")
        bin_ms = int(span.text[: -len(unit)]) * _UNITS_MS[unit]
        return _GroupKey(None, bin_ms, _alias(cur, f"bin({span.text})"))
    name = _field_name(token)
    return _GroupKey(name, None, _alias(cur, name))


def _comma_list(cur: _Cursor, item: Callable[[_Cursor], Any], stop: str | None = None) -> list[Any]:
    items = [item(cur)]
    while (token := cur.peek()) is not None and token.is_op(","):
        cur.take()
        items.append(item(cur))
    if (token := cur.peek()) is not None and not (stop and token.is_word(stop)):
        raise Unsupported(f"unexpected {token.text!r}")
    return items


def _stats(cur: _Cursor) -> Callable[[list[Row]], list[Row]]:
    aggregates = _comma_list(cur, _parse_aggregate, stop="by")
    groups: list[_GroupKey] = []
    if not cur.done():
        cur.take()  # by
        groups = _comma_list(cur, _parse_group)

    def run(events: list[Row]) -> list[Row]:
        buckets: dict[tuple[Any, ...], list[Event]] = {}
        for event in events:
            buckets.setdefault(tuple(g.value(event) for g in groups), []).append(event)
        return [
            {
                **{g.alias: v for g, v in zip(groups, key, strict=True)},
                **{a.alias: a.apply(members) for a in aggregates},
            }
            for key, members in buckets.items()
        ]

    return run


# --- commands -------------------------------------------------------------------


def _split_commands(tokens: list[Token]) -> list[list[Token]]:
    commands: list[list[Token]] = [[]]
    for token in tokens:
        if token.is_op("|"):
            commands.append([])
        else:
            commands[-1].append(token)
    if any(not c for c in commands):
        raise Unsupported("empty command")
    return commands


def _sort_key(field: str) -> Callable[[Row], tuple[int, Any]]:
    def key(row: Row) -> tuple[int, Any]:
        value = row.get(field)
        number = _number(value)
        return (1, 0) if value is None else (0, number if number is not None else str(value))

    return key


@dataclass(frozen=True)
class Query:
    """A parsed query; `run(events)` returns its result rows."""

    text: str

    def run(self, events: Iterable[Event]) -> list[Row]:
        rows: list[Row] = list(events)
        projection: list[str] | None = None
        for command in _split_commands(tokenize(self.text)):
            name = command[0].text.lower() if command[0].kind == "ident" else ""
            cur = _Cursor(command[1:])
            if name == "fields":
                projection = _comma_list(cur, lambda c: _field_name(c.take()))
            elif name == "filter":
                predicate = _parse_or(cur)
                if (token := cur.peek()) is not None:
                    raise Unsupported(f"unexpected {token.text!r} in filter")
                rows = [r for r in rows if predicate(r)]
            elif name == "stats":
                rows, projection = _stats(cur)(rows), None
            elif name == "sort":
                field = _field_name(cur.take())
                direction = cur.take()
                if not direction.is_word("asc", "desc") or not cur.done():
                    raise Unsupported("sort needs one field and asc or desc")
                present = [r for r in rows if r.get(field) is not None]
                present.sort(key=_sort_key(field), reverse=direction.is_word("desc"))
                rows = present + [r for r in rows if r.get(field) is None]
            elif name == "limit":
                count = cur.take()
                if count.kind != "number" or not cur.done():
                    raise Unsupported("limit needs one number")
                rows = rows[: int(count.text)]
            else:
                raise Unsupported(f"command {command[0].text!r} is not modelled")
        if projection is not None:
            rows = [{f: r[f] for f in projection if r.get(f) is not None} for r in rows]
        return rows


def _flatten(value: Any, prefix: str, out: Event) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}{key}.", out)
    elif isinstance(value, bool):
        out[prefix[:-1]] = int(value)  # Logs Insights reads JSON booleans as 1/0
    else:
        out[prefix[:-1]] = value


def event(line: dict[str, Any], *, log_group: str, timestamp_ms: int) -> Event:
    """One log event as Logs Insights sees a JSON line: flattened, with @ fields."""
    out: Event = {
        "@timestamp": timestamp_ms,
        "@message": json.dumps(line),
        "@log": f"000000000000:{log_group}",
    }
    _flatten(line, "", out)
    return out
