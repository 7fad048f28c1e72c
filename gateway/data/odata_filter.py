"""OData ``$filter`` parsed into a small tree the dataset layer turns into SQL.

Supported: ``eq ne gt ge lt le`` (``eq null`` / ``ne null`` too), ``in (...)``, ``and``,
``or``, ``not``, parentheses, and the functions ``contains``, ``startswith``,
``endswith``. Literals: strings (``''`` escapes a quote), integers, decimals, ``true``,
``false``, ``null``, dates (``2026-01-31``) and date-times with an offset
(``2026-01-31T10:00:00+01:00``, ``...Z``). Anything else is 501 (a feature we do not
have) or 400 (not OData), never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from dataclasses import dataclass
from typing import Any, Final

from gateway.data.datasets import Compare, Junction, Negation
from gateway.errors import BadRequest, NotSupported

__all__ = ["Compare", "Junction", "Negation", "parse_filter"]

_TOKEN: Final = re.compile(
    r"\s*(?:"
    r"(?P<string>'(?:[^']|'')*')"
    r"|(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))"
    r"|(?P<date>\d{4}-\d{2}-\d{2})"
    r"|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<punct>[(),])"
    r")"
)
_COMPARISONS: Final = {"eq": "eq", "ne": "ne", "gt": "gt", "ge": "gte", "lt": "lt", "le": "lte"}
_FUNCTIONS: Final = {"contains": "contains", "startswith": "starts_with", "endswith": "ends_with"}
_KNOWN_UNSUPPORTED: Final = frozenset(
    {"has", "add", "sub", "mul", "div", "mod", "any", "all", "tolower", "toupper", "trim",
     "length", "indexof", "substring", "concat", "year", "month", "day", "hour", "minute",
     "second", "round", "floor", "ceiling", "cast", "isof", "now", "date", "time"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str


def _tokens(text: str) -> list[_Tok]:
    found: list[_Tok] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise BadRequest(
                f"$filter: cannot read {text[position : position + 20]!r}", param="$filter"
            )
        kind = match.lastgroup or ""
        found.append(_Tok(kind, match.group(kind)))
        position = match.end()
    return found


class _Parser:
    def __init__(self, tokens: list[_Tok], fields: set[str]) -> None:
        self.tokens = tokens
        self.index = 0
        self.fields = fields

    def peek(self) -> _Tok | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Tok:
        token = self.peek()
        if token is None:
            raise BadRequest("$filter ends too early", param="$filter")
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise BadRequest(f"$filter: expected {text!r}, found {token.text!r}", param="$filter")

    def parse(self) -> Any:
        tree = self.disjunction()
        if self.peek() is not None:
            raise BadRequest(f"$filter: unexpected {self.peek().text!r}", param="$filter")  # type: ignore[union-attr]
        return tree

    def disjunction(self) -> Any:
        left = self.conjunction()
        while self._word("or"):
            left = Junction("or", left, self.conjunction())
        return left

    def conjunction(self) -> Any:
        left = self.unary()
        while self._word("and"):
            left = Junction("and", left, self.unary())
        return left

    def _word(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text == word:
            self.index += 1
            return True
        return False

    def unary(self) -> Any:
        if self._word("not"):
            return Negation(self.unary())
        token = self.peek()
        if token is not None and token.text == "(":
            self.take()
            inner = self.disjunction()
            self.expect(")")
            return inner
        return self.predicate()

    def field(self, token: _Tok) -> str:
        if token.kind != "name" or token.text not in self.fields:
            raise BadRequest(f"$filter: no property {token.text!r}", param="$filter")
        return token.text

    def predicate(self) -> Any:
        token = self.take()
        if token.kind == "name" and self.peek() is not None and self.peek().text == "(":  # type: ignore[union-attr]
            name = token.text
            if name not in _FUNCTIONS:
                if name in _KNOWN_UNSUPPORTED:
                    raise NotSupported(f"$filter: the function {name}() is not supported here")
                raise BadRequest(f"$filter: unknown function {name}()", param="$filter")
            self.expect("(")
            target = self.field(self.take())
            self.expect(",")
            value = self.literal(self.take())
            self.expect(")")
            if not isinstance(value, str):
                raise BadRequest(f"$filter: {name}() compares with a string", param="$filter")
            return Compare(target, _FUNCTIONS[name], value)
        target = self.field(token)
        operator = self.take()
        if operator.kind == "name" and operator.text == "in":
            self.expect("(")
            values = [self.literal(self.take())]
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.take()
                values.append(self.literal(self.take()))
            self.expect(")")
            return Compare(target, "in", values)
        if operator.kind != "name" or operator.text not in _COMPARISONS:
            if operator.text in _KNOWN_UNSUPPORTED:
                raise NotSupported(f"$filter: the operator {operator.text!r} is not supported here")
            raise BadRequest(
                f"$filter: expected an operator, found {operator.text!r}", param="$filter"
            )
        value = self.literal(self.take())
        op = _COMPARISONS[operator.text]
        if value is None:
            if op not in ("eq", "ne"):
                raise BadRequest("$filter: null compares only with eq or ne", param="$filter")
            return Compare(target, "is_null" if op == "eq" else "not_null")
        return Compare(target, op, value)

    def literal(self, token: _Tok) -> Any:
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "number":
            text = token.text.rstrip("mMdDfFlL")
            if re.fullmatch(r"-?\d+", text):
                return int(text)
            return decimal.Decimal(text)
        if token.kind == "date":
            return dt.date.fromisoformat(token.text)
        if token.kind == "datetime":
            return dt.datetime.fromisoformat(token.text.replace("Z", "+00:00"))
        if token.kind == "name" and token.text in ("true", "false"):
            return token.text == "true"
        if token.kind == "name" and token.text == "null":
            return None
        raise BadRequest(f"$filter: expected a value, found {token.text!r}", param="$filter")


def parse_filter(text: str, fields: set[str]) -> Any:
    """The tree of `text`, naming only `fields`; 400 or 501 saying what is wrong."""
    tokens = _tokens(text)
    if not tokens:
        raise BadRequest("$filter is empty", param="$filter")
    return _Parser(tokens, fields).parse()
