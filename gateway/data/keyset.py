"""Keyset paging: where the next page starts, and the signed token that carries it.

A page is ``ORDER BY k1, k2, … NULLS LAST LIMIT n`` and the next one starts strictly
after the last row's sort-key values (`seek`): ``WHERE (k1, k2) > ($1, $2)`` when every
key is non-null and runs one way, the expanded form with null tests otherwise. No OFFSET,
so page N costs what page 1 costs, and rows inserted between pages neither shift nor
repeat the rows already read.

The position travels in an opaque ``$skiptoken``: the values, tagged with their types,
and a binding (a digest of the dataset, its definition, the caller's tenant and the
normalised query options), signed with HMAC-SHA256. Several secrets may be configured;
the first signs, all verify, so secrets rotate without breaking open reads. A token that
does not verify, or was issued for another query or tenant, is refused with a 400 that
tells the client to start again.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from sqlglot import exp

from gateway.errors import BadRequest

__all__ = ["Opened", "SkipTokens", "SortKey", "binding_digest", "seek", "through"]

_MAC_BYTES: Final = 16
_START_OVER: Final = "start the read again from the first page (the URL without $skiptoken)"


@dataclass(frozen=True, slots=True)
class SortKey:
    sql: exp.Expr
    descending: bool
    nullable: bool


def seek(
    keys: Sequence[SortKey], values: Sequence[Any], bind: Callable[[Any], exp.Expr]
) -> exp.Expr:
    """Rows strictly after `values` in ``ORDER BY keys NULLS LAST``."""
    directions = {key.descending for key in keys}
    if len(directions) == 1 and not any(k.nullable for k in keys) and None not in values:
        comparison = exp.LT if keys[0].descending else exp.GT
        if len(keys) == 1:
            return comparison(this=keys[0].sql.copy(), expression=bind(values[0]))
        left = exp.Tuple(expressions=[k.sql.copy() for k in keys])
        return comparison(this=left, expression=exp.Tuple(expressions=[bind(v) for v in values]))
    terms: list[exp.Expr] = []
    for at, (key, value) in enumerate(zip(keys, values, strict=True)):
        if value is None:
            continue  # nulls come last: nothing follows a null in this column
        comparison = exp.LT if key.descending else exp.GT
        after: exp.Expr = comparison(this=key.sql.copy(), expression=bind(value))
        if key.nullable:
            null = exp.Is(this=key.sql.copy(), expression=exp.Null())
            after = exp.Paren(this=exp.or_(after, null, copy=False))
        same = [_equal(k, v, bind) for k, v in zip(keys[:at], values[:at], strict=True)]
        terms.append(exp.and_(*same, after, copy=False) if same else after)
    if not terms:
        return exp.false()
    return exp.Paren(this=exp.or_(*terms, copy=False))


def through(
    keys: Sequence[SortKey], values: Sequence[Any], bind: Callable[[Any], exp.Expr]
) -> exp.Expr | None:
    """Rows up to and including `values` (``(k1, k2) <= ($1, $2)``), when the keys are
    non-null and run one way; else None. An upper bound lets a scan skip what follows."""
    if len({k.descending for k in keys}) != 1 or any(k.nullable for k in keys):
        return None
    if None in values:
        return None
    comparison = exp.GTE if keys[0].descending else exp.LTE
    if len(keys) == 1:
        return comparison(this=keys[0].sql.copy(), expression=bind(values[0]))
    left = exp.Tuple(expressions=[k.sql.copy() for k in keys])
    return comparison(this=left, expression=exp.Tuple(expressions=[bind(v) for v in values]))


def _equal(key: SortKey, value: Any, bind: Callable[[Any], exp.Expr]) -> exp.Expr:
    if value is None:
        return exp.Is(this=key.sql.copy(), expression=exp.Null())
    return exp.EQ(this=key.sql.copy(), expression=bind(value))


def binding_digest(*parts: Any) -> str:
    """What a token is bound to: dataset, definition, tenant and normalised options."""
    raw = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:32]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Opened:
    """What a genuine token says."""

    position: list[Any]
    delivered: int
    """Rows served before this position (``$top`` counts across pages)."""
    span: int | None
    """How far an integer first sort key moved over the previous page: a guess of where
    the next page ends, so a scan can skip to it without first finding it."""


class SkipTokens:
    """Issues and opens signed ``$skiptoken`` values; the first secret signs."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self._secrets = tuple(secrets)

    def _mac(self, secret: bytes, payload: bytes) -> bytes:
        return hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(
        self, binding: str, position: Sequence[Any], delivered: int, span: int | None = None
    ) -> str:
        """A token for the rows after `position`; `span`, when given, is how far the
        first sort key moved over the page just served (where the next page probably
        ends: `Opened.span`)."""
        data: dict[str, Any] = {"b": binding, "k": [_encode(v) for v in position], "n": delivered}
        if span is not None:
            data["w"] = span
        payload = orjson.dumps(data)
        return f"{_b64(payload)}.{_b64(self._mac(self._secrets[0], payload))}"

    def open(self, token: str, binding: str) -> Opened:
        """The position, rows delivered so far and span; 400 telling the client to start
        over."""
        body, _, mac = token.partition(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            raise _refused("$skiptoken is malformed") from None
        if not any(hmac.compare_digest(self._mac(s, payload), signature) for s in self._secrets):
            raise _refused(
                "$skiptoken was not issued by this server, or was issued before it restarted "
                "or changed its secret"
            )
        try:
            data = orjson.loads(payload)
            position = [_decode(v) for v in data["k"]]
            delivered = int(data["n"])
            span = data.get("w")
            issued_for = str(data["b"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, decimal.InvalidOperation):
            raise _refused("$skiptoken is malformed") from None
        if not hmac.compare_digest(issued_for, binding):
            raise _refused("$skiptoken belongs to another query, dataset or key")
        fits = isinstance(span, int) and not isinstance(span, bool) and span >= 0
        return Opened(position, delivered, span if fits else None)


def _refused(why: str) -> BadRequest:
    return BadRequest(f"{why}: {_START_OVER}", code="invalid_skiptoken", param="$skiptoken")


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else ["i", str(value)]
    if isinstance(value, float):
        return ["f", repr(value)]
    if isinstance(value, decimal.Decimal):
        return ["n", str(value)]
    if isinstance(value, dt.datetime):
        return ["t", value.isoformat()]
    if isinstance(value, dt.date):
        return ["d", value.isoformat()]
    if isinstance(value, dt.time):
        return ["h", value.isoformat()]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["b", _b64(bytes(value))]
    return ["s", str(value)]


_DECODERS: Final[dict[str, Callable[[str], Any]]] = {
    "i": int,
    "f": float,
    "n": decimal.Decimal,
    "t": dt.datetime.fromisoformat,
    "d": dt.date.fromisoformat,
    "h": dt.time.fromisoformat,
    "b": _unb64,
    "s": str,
}


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        tag, text = value
        return _DECODERS[tag](text)
    return value
