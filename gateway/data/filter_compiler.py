"""The filter tree compiled to sqlglot expressions in a backend's dialect.

Every argument is checked against its Edm type before any SQL exists (``tolower`` of a
number is a 400 naming the function and the type), every literal is bound as a parameter
(never inlined), and each function means the same on DuckDB and Postgres:

* string functions count characters; ``indexof`` and ``substring`` count from 0;
  ``contains``/``startswith``/``endswith`` match literally (``%`` and ``_`` are not
  wildcards) and case-sensitively;
* ``year month day hour minute second date time`` read a timestamp in UTC (naive
  timestamps are UTC already; ``timestamptz`` is converted first);
* ``round`` rounds half away from zero, for doubles too (Postgres would round them half
  to even); ``div`` of two integers truncates toward zero; dividing by zero gives null.

A literal is bound in the type of what it is compared with: a ``DateTimeOffset`` against
a ``timestamp`` column becomes the naive UTC instant, against ``timestamptz`` the aware
one, so the offset the client wrote (``Z``, ``+01:00``, ``-05:00``) never changes the
answer. What is unsupported is 501, naming the function; what is wrong is 400.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlglot import exp

from gateway.data.filter_tree import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DATETIMEOFFSET,
    EDM_DECIMAL,
    EDM_DOUBLE,
    EDM_INT64,
    EDM_NULL,
    EDM_STRING,
    EDM_TIMEOFDAY,
    Binary,
    Call,
    Field,
    In,
    Junction,
    Literal,
    Negate,
    Negation,
    Node,
)
from gateway.errors import BadRequest, NotSupported

__all__ = ["FUNCTIONS", "Column", "FilterCompiler"]

NUMERIC: Final = frozenset({EDM_INT64, EDM_DECIMAL, EDM_DOUBLE})
TEMPORAL: Final = frozenset({EDM_DATE, EDM_DATETIMEOFFSET})
STAMP: Final = frozenset({EDM_DATETIMEOFFSET})
_SQL_TYPES: Final = {
    EDM_STRING: "text", EDM_INT64: "bigint", EDM_DECIMAL: "decimal", EDM_DOUBLE: "double",
    EDM_BOOLEAN: "boolean", EDM_DATE: "date", EDM_TIMEOFDAY: "time",
}  # fmt: skip
_COMPARISONS: Final = {
    "eq": exp.EQ, "ne": exp.NEQ, "gt": exp.GT, "ge": exp.GTE, "lt": exp.LT, "le": exp.LTE,
}  # fmt: skip
_ARITHMETIC: Final = frozenset({"add", "sub", "mul", "div", "mod"})
FUNCTIONS: Final = (
    "contains", "startswith", "endswith", "tolower", "toupper", "length", "trim", "concat",
    "indexof", "substring", "year", "month", "day", "hour", "minute", "second", "date",
    "time", "round", "floor", "ceiling",
)  # fmt: skip
_PARTS: Final = {"year": "YEAR", "month": "MONTH", "day": "DAY", "hour": "HOUR",
                 "minute": "MINUTE", "second": "SECOND"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Column:
    """What the compiler knows of a property: its SQL and its Edm type."""

    expression: exp.Expr
    edm: str
    zoned: bool = False
    """For DateTimeOffset: the column holds instants (timestamptz), not naive UTC."""


@dataclass(frozen=True, slots=True)
class _Typed:
    sql: exp.Expr
    edm: str
    zoned: bool = False


class FilterCompiler:
    """Compiles filter trees over `columns`; `bind(value)` returns a parameter."""

    def __init__(
        self,
        columns: Mapping[str, Column],
        dialect: str,
        bind: Callable[[Any], exp.Expr],
        *,
        param: str = "$filter",
    ) -> None:
        self.columns = columns
        self.dialect = dialect
        self.bind = bind
        self.param = param

    def _bad(self, message: str) -> BadRequest:
        return BadRequest(f"{self.param}: {message}", param=self.param)

    def condition(self, node: Node) -> exp.Expr:
        """`node` as a boolean SQL expression."""
        if isinstance(node, Junction):
            items = [self.condition(item) for item in node.items]
            joined = (
                exp.and_(*items, copy=False) if node.kind == "and" else exp.or_(*items, copy=False)
            )
            return exp.Paren(this=joined)
        if isinstance(node, Negation):
            return exp.Not(this=exp.Paren(this=self.condition(node.inner)))
        typed = self.value(node)
        if typed.edm != EDM_BOOLEAN:
            raise self._bad(f"a condition must be true or false, not {typed.edm}")
        return typed.sql

    def value(self, node: Node, hint: _Typed | None = None) -> _Typed:
        if isinstance(node, Field):
            column = self.columns.get(node.name)
            if column is None:
                raise self._bad(f"no property {node.name!r}")
            return _Typed(column.expression.copy(), column.edm, column.zoned)
        if isinstance(node, Literal):
            return self.literal(node, hint)
        if isinstance(node, Binary):
            if node.op in _COMPARISONS:
                return _Typed(self.compare(node), EDM_BOOLEAN)
            return self.arithmetic(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, In):
            target = self.value(node.target)
            values = [self.value(v, target) for v in node.values]
            for value in values:
                self._comparable(target, value, "in")
            return _Typed(exp.In(this=target.sql, expressions=[v.sql for v in values]), EDM_BOOLEAN)
        if isinstance(node, Negate):
            inner = self.value(node.inner)
            self._expect(inner, NUMERIC, "minus")
            return _Typed(exp.Neg(this=exp.Paren(this=inner.sql)), inner.edm)
        return _Typed(self.condition(node), EDM_BOOLEAN)

    # --- literals ----------------------------------------------------------------------

    def literal(self, node: Literal, hint: _Typed | None) -> _Typed:
        value, edm = node.value, node.edm
        if edm == EDM_NULL:
            raise self._bad("null may only be compared with eq or ne")
        if edm == EDM_DATE and hint is not None and hint.edm == EDM_DATETIMEOFFSET:
            value, edm = dt.datetime.combine(value, dt.time(), dt.UTC), EDM_DATETIMEOFFSET
        if edm == EDM_DATETIMEOFFSET:
            instant = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
            instant = instant.astimezone(dt.UTC)
            if hint is not None and hint.zoned:
                return _Typed(self._cast(self.bind(instant), "timestamptz"), edm, True)
            return _Typed(self._cast(self.bind(instant.replace(tzinfo=None)), "timestamp"), edm)
        if edm == EDM_DECIMAL and self.dialect == "duckdb":
            return _Typed(self.bind(value), edm)  # DuckDB's bare DECIMAL is (18,3): no cast
        return _Typed(self._cast(self.bind(value), _SQL_TYPES[edm]), edm)

    def _cast(self, sql: exp.Expr, to: str) -> exp.Expr:
        return exp.Cast(this=sql, to=_data_type(to, self.dialect).copy())

    # --- comparisons and arithmetic ----------------------------------------------------

    def compare(self, node: Binary) -> exp.Expr:
        left_node, right_node = node.left, node.right
        for this, other in ((left_node, right_node), (right_node, left_node)):
            if isinstance(other, Literal) and other.edm == EDM_NULL:
                if node.op not in ("eq", "ne"):
                    raise self._bad("null may only be compared with eq or ne")
                if isinstance(this, Literal) and this.edm == EDM_NULL:
                    return exp.true() if node.op == "eq" else exp.false()
                tested = self.value(this)
                check = exp.Is(this=tested.sql, expression=exp.Null())
                return check if node.op == "eq" else exp.Not(this=check)
        if isinstance(left_node, Literal) and not isinstance(right_node, Literal):
            right = self.value(right_node)
            left = self.value(left_node, right)
        else:
            left = self.value(left_node)
            right = self.value(right_node, left)
        self._comparable(left, right, node.op)
        return _COMPARISONS[node.op](this=left.sql, expression=right.sql)

    def _comparable(self, left: _Typed, right: _Typed, op: str) -> None:
        kinds = {left.edm, right.edm}
        if len(kinds) == 1 or kinds <= NUMERIC or kinds <= TEMPORAL:
            return
        raise self._bad(f"cannot compare {left.edm} with {right.edm} ({op})")

    def arithmetic(self, node: Binary) -> _Typed:
        if isinstance(node.left, Literal) and not isinstance(node.right, Literal):
            right = self.value(node.right)
            left = self.value(node.left, right)
        else:
            left = self.value(node.left)
            right = self.value(node.right, left)
        self._expect(left, NUMERIC, node.op)
        self._expect(right, NUMERIC, node.op)
        kinds = {left.edm, right.edm}
        edm = EDM_INT64
        if kinds & {EDM_DOUBLE, EDM_DECIMAL}:
            edm = EDM_DOUBLE if EDM_DOUBLE in kinds else EDM_DECIMAL
        a: exp.Expr = exp.Paren(this=left.sql)
        b: exp.Expr = exp.Paren(this=right.sql)
        if node.op in ("div", "mod"):
            b = exp.Nullif(this=b, expression=exp.Literal.number(0))
        if node.op == "add":
            sql: exp.Expr = exp.Add(this=a, expression=b)
        elif node.op == "sub":
            sql = exp.Sub(this=a, expression=b)
        elif node.op == "mul":
            sql = exp.Mul(this=a, expression=b)
        elif node.op == "mod":
            sql = exp.Mod(this=a, expression=b)
        elif edm == EDM_INT64:
            quotient = exp.IntDiv(this=a, expression=b)
            sql = self._cast(quotient, "bigint")
        else:  # decimal or double division, never integer
            sql = exp.Div(this=a, expression=b, typed=True)
        return _Typed(exp.Paren(this=sql), edm)

    def _expect(self, typed: _Typed, allowed: frozenset[str], where: str, at: int = 0) -> None:
        if typed.edm not in allowed:
            kinds = " or ".join(sorted(allowed))
            place = f"argument {at} of {where}()" if at else f"the operands of {where}"
            raise self._bad(f"{place} must be {kinds}, not {typed.edm}")

    # --- functions ---------------------------------------------------------------------

    def call(self, node: Call) -> _Typed:
        name = node.name
        handler = _HANDLERS.get(name)
        if handler is None:
            raise NotSupported(f"{self.param}: the function {name}() is not supported here")
        low, high = _ARITY[name]
        if not low <= len(node.args) <= high:
            wanted = str(low) if low == high else f"{low} or {high}"
            raise self._bad(f"{name}() takes {wanted} arguments, not {len(node.args)}")
        return handler(self, node)

    def _args(self, node: Call, *allowed: frozenset[str]) -> list[_Typed]:
        typed: list[_Typed] = []
        for at, (arg, kinds) in enumerate(zip(node.args, allowed, strict=False), start=1):
            value = self.value(arg)
            self._expect(value, kinds, node.name, at)
            typed.append(value)
        return typed

    def _match(self, node: Call) -> _Typed:
        needle = node.args[1]
        if isinstance(needle, Literal) and needle.edm == EDM_STRING:
            (text,) = self._args(node, _S)
            escaped = str(needle.value).replace("\\", "\\\\").replace("%", "\\%")
            escaped = escaped.replace("_", "\\_")
            wildcard = {"contains": "%{}%", "startswith": "{}%", "endswith": "%{}"}[node.name]
            like = exp.Like(this=text.sql, expression=self.bind(wildcard.format(escaped)))
            return _Typed(exp.Escape(this=like, expression=exp.Literal.string("\\")), EDM_BOOLEAN)
        text, pattern = self._args(node, _S, _S)
        if node.name == "contains":
            found = exp.StrPosition(this=text.sql, substr=pattern.sql)
            return _Typed(exp.GT(this=found, expression=exp.Literal.number(0)), EDM_BOOLEAN)
        size = exp.Length(this=pattern.sql.copy())
        side = exp.Left if node.name == "startswith" else exp.Right
        head = side(this=text.sql, expression=size)
        return _Typed(exp.EQ(this=head, expression=pattern.sql), EDM_BOOLEAN)

    def _string(self, node: Call) -> _Typed:
        (text,) = self._args(node, _S)
        kinds = {"tolower": exp.Lower, "toupper": exp.Upper, "trim": exp.Trim}
        if node.name == "length":
            return _Typed(self._cast(exp.Length(this=text.sql), "bigint"), EDM_INT64)
        return _Typed(kinds[node.name](this=text.sql), EDM_STRING)

    def _concat(self, node: Call) -> _Typed:
        left, right = self._args(node, _S, _S)
        return _Typed(exp.DPipe(this=left.sql, expression=right.sql), EDM_STRING)

    def _indexof(self, node: Call) -> _Typed:
        text, needle = self._args(node, _S, _S)
        found = exp.StrPosition(this=text.sql, substr=needle.sql)
        return _Typed(exp.Sub(this=found, expression=exp.Literal.number(1)), EDM_INT64)

    def _substring(self, node: Call) -> _Typed:
        text, *numbers = self._args(node, _S, _I, _I)
        for at, arg in enumerate(node.args[1:], start=2):
            if isinstance(arg, Literal) and arg.value < 0:
                raise self._bad(f"argument {at} of substring() must not be negative")
        start = exp.Add(this=self._cast(numbers[0].sql, "int"), expression=exp.Literal.number(1))
        length = self._cast(numbers[1].sql, "int") if len(numbers) > 1 else None
        return _Typed(exp.Substring(this=text.sql, start=start, length=length), EDM_STRING)

    def _utc(self, typed: _Typed) -> exp.Expr:
        """A timestamp as naive UTC wall-clock time."""
        if typed.zoned:
            return exp.AtTimeZone(this=typed.sql, zone=exp.Literal.string("UTC"))
        return typed.sql

    def _part(self, node: Call) -> _Typed:
        allowed = TEMPORAL if node.name in ("year", "month", "day") else _TIMES
        (moment,) = self._args(node, allowed)
        source = self._utc(moment)
        if moment.edm == EDM_DATE:
            source = self._cast(source, "timestamp")
        part: exp.Expr = exp.Extract(this=exp.var(_PARTS[node.name]), expression=source)
        if node.name == "second":
            part = exp.Floor(this=part)
        return _Typed(self._cast(part, "bigint"), EDM_INT64)

    def _date_or_time(self, node: Call) -> _Typed:
        (moment,) = self._args(node, STAMP)
        to = "date" if node.name == "date" else "time"
        edm = EDM_DATE if node.name == "date" else EDM_TIMEOFDAY
        return _Typed(self._cast(self._utc(moment), to), edm)

    def _rounding(self, node: Call) -> _Typed:
        (number,) = self._args(node, NUMERIC)
        sql = number.sql
        if node.name == "floor":
            return _Typed(exp.Floor(this=sql), number.edm)
        if node.name == "ceiling":
            return _Typed(exp.Ceil(this=sql), number.edm)
        if number.edm != EDM_DOUBLE:
            return _Typed(exp.Round(this=sql), number.edm)
        # Half away from zero, as ROUND does for decimals on both backends.
        magnitude = exp.Floor(
            this=exp.Add(this=exp.Abs(this=sql.copy()), expression=exp.Literal.number(0.5))
        )
        signed = exp.Mul(this=exp.Sign(this=sql), expression=magnitude)
        return _Typed(exp.Paren(this=signed), EDM_DOUBLE)


@functools.cache
def _data_type(name: str, dialect: str) -> exp.DataType:
    return exp.DataType.build(name, dialect=dialect)


_S: Final = frozenset({EDM_STRING})
_I: Final = frozenset({EDM_INT64})
_TIMES: Final = frozenset({EDM_DATETIMEOFFSET, EDM_TIMEOFDAY})
_Handler = Callable[[FilterCompiler, Call], _Typed]
_HANDLERS: Final[dict[str, _Handler]] = {
    **dict.fromkeys(("contains", "startswith", "endswith"), FilterCompiler._match),
    **dict.fromkeys(("tolower", "toupper", "trim", "length"), FilterCompiler._string),
    "concat": FilterCompiler._concat,
    "indexof": FilterCompiler._indexof,
    "substring": FilterCompiler._substring,
    **dict.fromkeys(("year", "month", "day", "hour", "minute", "second"), FilterCompiler._part),
    **dict.fromkeys(("date", "time"), FilterCompiler._date_or_time),
    **dict.fromkeys(("round", "floor", "ceiling"), FilterCompiler._rounding),
}
_ARITY: Final = {
    **dict.fromkeys(("contains", "startswith", "endswith", "concat", "indexof"), (2, 2)),
    "substring": (2, 3),
    **dict.fromkeys(
        ("tolower", "toupper", "trim", "length", "year", "month", "day", "hour", "minute",
         "second", "date", "time", "round", "floor", "ceiling"), (1, 1)
    ),
}  # fmt: skip
