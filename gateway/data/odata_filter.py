"""OData ``$filter`` read into the filter tree (`gateway.data.filter_tree`).

The grammar is OData 4.0's common expression, minus navigation: ``or and not``,
``eq ne gt ge lt le in``, ``add sub mul div mod``, unary minus, parentheses, function
calls, properties, and literals of every Edm type the feeds declare — strings (``''``
escapes a quote), integers, decimals, doubles, ``true false null``, dates, times of day,
and date-times with any offset (``Z``, ``+01:00``, ``-05:30``, fractional seconds).
Operators and function names are case-insensitive (OData 4.01); properties are not.

Which functions exist, and their argument types, is the compiler's business; this module
knows only which names are functions at all. Lambdas (``any``/``all``), ``has``,
``divby``, paths, typed literals (``duration'…'``) and unknown functions answer 501
naming what is missing; anything that is not OData answers 400.

Limits (documented in the README): chains of ``and``/``or`` and ``in`` lists are read in
loops into flat nodes, so their length is bounded only by the URL; nesting (parentheses,
``not``, unary minus, function arguments) is bounded by ``odata.max_filter_depth``
(default 50): deeper input answers 400, never a crash.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from dataclasses import dataclass
from typing import Final

from gateway.data.filter_compiler import FUNCTIONS
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

__all__ = ["DEFAULT_MAX_DEPTH", "parse_filter"]

DEFAULT_MAX_DEPTH: Final = 50
_FRACTION: Final = r"(?:\.\d{1,12})?"
_TOKEN: Final = re.compile(
    r"\s*(?:"
    r"(?P<string>'(?:[^']|'')*')"
    rf"|(?P<datetime>\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}:\d{{2}}(?::\d{{2}}{_FRACTION})?"
    r"(?:[Zz]|[+ -]\d{2}:\d{2}))"
    r"|(?P<date>\d{4}-\d{2}-\d{2})"
    rf"|(?P<time>\d{{2}}:\d{{2}}(?::\d{{2}}{_FRACTION})?)"
    r"|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"|(?P<punct>[(),/:-])"
    r")"
)
_INFIX: Final = {
    "or": 10, "and": 20, "eq": 40, "ne": 40, "gt": 45, "ge": 45, "lt": 45, "le": 45,
    "in": 45, "has": 45, "add": 50, "sub": 50, "mul": 60, "div": 60, "mod": 60, "divby": 60,
}  # fmt: skip
_NOT_BP: Final = 30
"""``not`` takes a whole comparison: ``not a eq b`` is ``not (a eq b)``."""
_MINUS_BP: Final = 70
_UNSUPPORTED_OPERATORS: Final = frozenset({"has", "divby"})


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


def _tokens(text: str) -> list[_Tok]:
    found: list[_Tok] = []
    position = 0
    length = len(text)
    while position < length:
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip() == "":
                break
            raise BadRequest(
                f"$filter: cannot read {text[position : position + 20]!r}", param="$filter"
            )
        kind = match.lastgroup or ""
        found.append(_Tok(kind, match.group(kind), match.start(kind), match.end()))
        position = match.end()
    return found


def _bad(message: str) -> BadRequest:
    return BadRequest(f"$filter: {message}", param="$filter")


class _Parser:
    """A Pratt parser: loops for chains, recursion only for nesting, which is counted."""

    def __init__(self, tokens: list[_Tok], fields: frozenset[str], max_depth: int) -> None:
        self.tokens = tokens
        self.index = 0
        self.fields = fields
        self.max_depth = max_depth
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Tok | None:
        at = self.index + ahead
        return self.tokens[at] if at < len(self.tokens) else None

    def take(self) -> _Tok:
        token = self.peek()
        if token is None:
            raise _bad("ends too early")
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise _bad(f"expected {text!r}, found {token.text!r}")

    def parse(self) -> Node:
        tree = self.nested(0)
        extra = self.peek()
        if extra is not None:
            raise _bad(f"unexpected {extra.text!r}")
        return tree

    def nested(self, min_bp: int) -> Node:
        """An expression one level deeper: inside parentheses, ``not``, minus, a call."""
        self.depth += 1
        if self.depth > self.max_depth:
            raise _bad(
                f"nested more than {self.max_depth} levels deep (parentheses, not, minus or "
                "function arguments); write it flatter"
            )
        inner = self.expression(min_bp)
        self.depth -= 1
        return inner

    def expression(self, min_bp: int) -> Node:
        """Operators bind by precedence; an operand recurses at most once per level."""
        left = self.prefix()
        while (token := self.peek()) is not None and token.kind == "name":
            op = token.text.lower()
            bp = _INFIX.get(op)
            if bp is None:
                raise _bad(f"expected an operator, found {token.text!r}")
            if bp <= min_bp:
                break
            self.index += 1
            if op in _UNSUPPORTED_OPERATORS:
                raise NotSupported(f"$filter: the operator {op!r} is not supported here")
            if op == "in":
                left = In(left, self.value_list())
            elif op in ("and", "or"):
                right = self.expression(bp)
                items = left.items if isinstance(left, Junction) and left.kind == op else (left,)
                left = Junction(op, (*items, right))
            else:
                left = Binary(op, left, self.expression(bp))
        return left

    def value_list(self) -> tuple[Node, ...]:
        self.expect("(")
        values = [self.nested(0)]
        while (token := self.peek()) is not None and token.text == ",":
            self.index += 1
            values.append(self.nested(0))
        self.expect(")")
        return tuple(values)

    def prefix(self) -> Node:
        token = self.take()
        if token.kind == "punct":
            if token.text == "(":
                inner = self.nested(0)
                self.expect(")")
                return inner
            if token.text == "-":
                following = self.peek()
                if (
                    following is not None
                    and following.kind == "number"
                    and (following.start == token.end)
                ):
                    self.index += 1
                    return _negative(_number(following.text))
                return Negate(self.nested(_MINUS_BP))
            raise _bad(f"expected a value, found {token.text!r}")
        if token.kind == "name":
            return self.name(token)
        return _literal(token)

    def name(self, token: _Tok) -> Node:
        word = token.text.lower()
        following = self.peek()
        if word == "not":
            return Negation(self.nested(_NOT_BP))
        if word in ("true", "false"):
            return Literal(word == "true", EDM_BOOLEAN)
        if word == "null":
            return Literal(None, EDM_NULL)
        if following is not None and following.text == "(":
            if word not in FUNCTIONS:
                raise NotSupported(f"$filter: the function {word}() is not supported here")
            self.index += 1
            args: list[Node] = []
            if (closing := self.peek()) is not None and closing.text == ")":
                self.index += 1
            else:
                args.append(self.nested(0))
                while (sep := self.peek()) is not None and sep.text == ",":
                    self.index += 1
                    args.append(self.nested(0))
                self.expect(")")
            return Call(word, tuple(args))
        if following is not None and following.text == "/":
            raise NotSupported(
                "$filter: property paths and lambda operators (any, all) are not supported here"
            )
        if following is not None and following.kind == "string" and following.start == token.end:
            raise NotSupported(f"$filter: {token.text}'…' literals are not supported here")
        if token.text not in self.fields:
            raise _bad(f"no property {token.text!r}")
        return Field(token.text)


def _literal(token: _Tok) -> Literal:
    text = token.text
    try:
        if token.kind == "string":
            return Literal(text[1:-1].replace("''", "'"), EDM_STRING)
        if token.kind == "number":
            return _number(text)
        if token.kind == "date":
            return Literal(dt.date.fromisoformat(text), EDM_DATE)
        if token.kind == "datetime":
            # A '+' sent unencoded in a URL arrives as a space: it can only mean '+' here.
            text = text[:-6] + "+" + text[-5:] if text[-6] == " " else text
            stamp = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
            return Literal(stamp, EDM_DATETIMEOFFSET)
        if token.kind == "time":
            return Literal(dt.time.fromisoformat(text), EDM_TIMEOFDAY)
    except ValueError:
        raise _bad(f"{text!r} is not a valid date or time") from None
    raise _bad(f"expected a value, found {text!r}")


def _number(text: str) -> Literal:
    suffix = text[-1].lower() if text[-1].isalpha() and text[-1] not in "eE" else ""
    digits = text[:-1] if suffix else text
    if suffix in ("d", "f") or (suffix == "" and ("e" in digits or "E" in digits)):
        return Literal(float(digits), EDM_DOUBLE)
    if suffix == "m" or "." in digits or "e" in digits.lower():
        return Literal(decimal.Decimal(digits), EDM_DECIMAL)
    value = int(digits)
    if value > 2**63 - 1:
        raise _bad(f"{text} is out of the Int64 range")
    return Literal(value, EDM_INT64)


def _negative(literal: Literal) -> Literal:
    return Literal(-literal.value, literal.edm)


def parse_filter(text: str, fields: set[str] | frozenset[str], *, max_depth: int = 50) -> Node:
    """The tree of `text`, naming only `fields`; 400 or 501 saying what is wrong."""
    tokens = _tokens(text)
    if not tokens:
        raise _bad("is empty")
    return _Parser(tokens, frozenset(fields), max_depth).parse()
