"""Request bodies checked against the schema each route publishes, before any upstream call.

Every route declares its body as a JSON schema in `RouteSpec.request_body`; the same
schema is in ``/openapi.json``. `read_json` checks the parsed body against it, so a body
that contradicts the published contract (``"messages": [1, 2, 3]``) is refused with a 400
naming the field (``messages[0]``), instead of becoming a paid upstream call or an upstream
error Tollway does not control. A new route gets the check by declaring its schema.

Not a JSON-schema engine: each schema is compiled once into a few nested closures for the
keywords routes use (``type``, ``enum``, ``const``, ``required``, ``properties``,
``additionalProperties``, ``items``, ``minItems``/``maxItems``, ``minLength``/``maxLength``,
``minimum``/``maximum`` and their exclusive forms, ``anyOf``/``oneOf``/``allOf``); other
keywords (``description``, ``format``, ``$ref``, …) are documentation and pass. Fields the
schema does not name pass through untouched, to the provider. The checks follow the
schema, not the body, so a deeply nested body costs no more than its schema's depth; a
valid body allocates nothing (a field's path is only spelled out when it is refused).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from gateway.errors import BadRequest
from gateway.routing import RouteSpec

__all__ = ["BodyChecks", "Check", "body_checks_key", "compile_check"]

Check = Callable[[Any, str], None]
"""Raises `BadRequest` naming the field at fault; the second argument is the value's path."""

_Rule = Callable[[Any], None]
"""A compiled rule: returns, or raises `_Invalid`."""


class _Invalid(Exception):
    """A refused value: what is wrong, and the path to it, innermost segment first."""

    def __init__(self, problem: str, *segments: str) -> None:
        self.problem = problem
        self.segments: list[str] = list(segments)

    def path(self, root: str) -> str:
        path = root
        for segment in reversed(self.segments):
            if segment.startswith("["):
                path += segment
            else:
                path = f"{path}.{segment}" if path else segment
        return path


_TYPES: Final[dict[str, Callable[[Any], bool]]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}
_PLAIN: Final[dict[str, type]] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}  # fmt: skip
_NAMES: Final = {
    "object": "an object", "array": "an array", "string": "a string", "boolean": "true or false",
    "null": "null", "integer": "a whole number", "number": "a number",
}  # fmt: skip


def _type_rule(spec: Any) -> _Rule | None:
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names or any(name not in _TYPES for name in names):
        return None  # an unknown type name: documentation, not a check
    wanted = " or ".join(_NAMES[name] for name in names)
    plain = tuple(_PLAIN[name] for name in names if name in _PLAIN)
    numeric = [_TYPES[name] for name in names if name not in _PLAIN]

    def rule(value: Any) -> None:
        if type(value) in plain:  # the common case: one exact type test
            return
        if isinstance(value, plain) and not isinstance(value, bool | int):
            return  # a subclass of dict, list or str
        if not any(test(value) for test in numeric):
            raise _Invalid(f"must be {wanted}")

    return rule


def _enum_rule(options: Sequence[Any]) -> _Rule:
    allowed = list(options)
    shown = ", ".join(str(o) for o in allowed[:12]) + (", …" if len(allowed) > 12 else "")
    try:
        pairs: frozenset[tuple[type, Any]] | None = frozenset((type(o), o) for o in allowed)
    except TypeError:  # an option that is a list or an object: compare one by one
        pairs = None

    def rule(value: Any) -> None:
        if pairs is not None:
            try:
                if (type(value), value) in pairs:
                    return
            except TypeError:  # the value is a list or an object: no option is
                pass
        elif any(value == o and type(value) is type(o) for o in allowed):
            return
        raise _Invalid(f"must be one of: {shown}")

    return rule


def _size_rule(kind: type, limit: int, more: bool, unit: str) -> _Rule:
    word = "at least" if more else "at most"

    def rule(value: Any) -> None:
        if isinstance(value, kind):
            size = len(value)  # type: ignore[arg-type]
            if size < limit if more else size > limit:
                raise _Invalid(f"must have {word} {limit} {unit}")

    return rule


_BOUNDS: Final[tuple[tuple[str, str, Callable[[float, float], bool]], ...]] = (
    ("minimum", "at least", lambda v, b: v < b),
    ("maximum", "at most", lambda v, b: v > b),
    ("exclusiveMinimum", "more than", lambda v, b: v <= b),
    ("exclusiveMaximum", "less than", lambda v, b: v >= b),
)


def _bound_rule(bound: float, word: str, beyond: Callable[[float, float], bool]) -> _Rule:
    def rule(value: Any) -> None:
        if _TYPES["number"](value) and beyond(value, bound):
            raise _Invalid(f"must be {word} {bound}")

    return rule


def _bound_rules(schema: Mapping[str, Any]) -> list[_Rule]:
    rules: list[_Rule] = []
    for kind, key, more, unit in (
        (list, "minItems", True, "item(s)"),
        (list, "maxItems", False, "item(s)"),
        (str, "minLength", True, "character(s)"),
        (str, "maxLength", False, "character(s)"),
    ):
        limit = schema.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            rules.append(_size_rule(kind, limit, more, unit))
    for key, word, beyond in _BOUNDS:
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            rules.append(_bound_rule(bound, word, beyond))
    return rules


def _object_rule(schema: Mapping[str, Any]) -> _Rule | None:
    required = [r for r in schema.get("required", ()) if isinstance(r, str)]
    properties = schema.get("properties")
    named = properties if isinstance(properties, Mapping) else {}
    fields = {
        name: compiled
        for name, sub in named.items()
        if isinstance(sub, Mapping) and (compiled := _compile(sub)) is not None
    }
    extra = schema.get("additionalProperties")
    extra_rule = _compile(extra) if isinstance(extra, Mapping) else None
    closed = extra is False
    if not (required or fields or extra_rule or closed):
        return None

    def rule(value: Any) -> None:
        if not isinstance(value, dict):
            return
        for name, item in value.items():
            field_rule = fields.get(name)
            if field_rule is None:
                if name in named:
                    continue
                if closed:
                    raise _Invalid("is not a known field", name)
                if extra_rule is None:
                    continue
                field_rule = extra_rule
            try:
                field_rule(item)
            except _Invalid as invalid:
                invalid.segments.append(name)
                raise
        for name in required:
            if name not in value:
                raise _Invalid("is required", name)

    return rule


def _items_rule(schema: Mapping[str, Any]) -> _Rule | None:
    items = schema.get("items")
    item_rule = _compile(items) if isinstance(items, Mapping) else None
    if item_rule is None:
        return None

    def rule(value: Any) -> None:
        if isinstance(value, list):
            for index, item in enumerate(value):
                try:
                    item_rule(item)
                except _Invalid as invalid:
                    invalid.segments.append(f"[{index}]")
                    raise

    return rule


def _alternatives_rule(alternatives: list[_Rule | None], exactly_one: bool) -> _Rule:
    def rule(value: Any) -> None:
        matched = 0
        best: _Invalid | None = None
        for alternative in alternatives:
            try:
                if alternative is not None:
                    alternative(value)
            except _Invalid as invalid:
                # The deepest complaint comes from the shape the value was meant to have.
                if best is None or len(invalid.segments) > len(best.segments):
                    best = invalid
            else:
                matched += 1
        if matched == 0:
            raise best or _Invalid("matches none of the allowed shapes")
        if exactly_one and matched > 1:
            raise _Invalid("matches more than one of the allowed shapes")

    return rule


def _combined_rules(schema: Mapping[str, Any]) -> list[_Rule]:
    rules: list[_Rule] = []
    for keyword in ("anyOf", "oneOf"):
        options = schema.get(keyword)
        if isinstance(options, Sequence) and options:
            alternatives = [_compile(o) for o in options if isinstance(o, Mapping)]
            rules.append(_alternatives_rule(alternatives, keyword == "oneOf"))
    every = schema.get("allOf")
    if isinstance(every, Sequence):
        rules += [r for sub in every if isinstance(sub, Mapping) and (r := _compile(sub))]
    return rules


def _compile(schema: Mapping[str, Any]) -> _Rule | None:
    """The rule for `schema`, or None when it constrains nothing."""
    rules: list[_Rule | None] = []
    if "type" in schema:
        rules.append(_type_rule(schema["type"]))
    enum = schema.get("enum")
    if isinstance(enum, Sequence) and not isinstance(enum, str):
        rules.append(_enum_rule(enum))
    if "const" in schema:
        rules.append(_enum_rule([schema["const"]]))
    rules += _bound_rules(schema)
    rules.append(_object_rule(schema))
    rules.append(_items_rule(schema))
    rules += _combined_rules(schema)
    present = [r for r in rules if r is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def every(value: Any) -> None:
        for rule in present:
            rule(value)

    return every


def compile_check(schema: Mapping[str, Any]) -> Check:
    """One function checking a value against `schema` (see the module's note)."""
    rule = _compile(schema)

    def check(value: Any, path: str) -> None:
        if rule is None:
            return
        try:
            rule(value)
        except _Invalid as invalid:
            where = invalid.path(path) or "body"
            raise BadRequest(f"'{where}' {invalid.problem}", param=where) from None

    return check


class BodyChecks:
    """Each route's compiled check, made once per schema."""

    __slots__ = ("_compiled",)

    def __init__(self) -> None:
        self._compiled: dict[int, tuple[Mapping[str, Any], Check]] = {}

    def for_spec(self, spec: RouteSpec | None) -> Check | None:
        schema = spec.request_body if spec is not None else None
        if schema is None:
            return None
        found = self._compiled.get(id(schema))
        if found is None or found[0] is not schema:
            found = self._compiled[id(schema)] = (schema, compile_check(schema))
        return found[1]


body_checks_key = web.AppKey("body_checks", BodyChecks)
