"""The filter tree both ways into a dataset share: OData's ``$filter`` and the JSON
``filters`` of ``/v1/datasets/{name}/query`` are read into these nodes, and one compiler
(`gateway.data.filter_compiler`) turns them into SQL.

`Junction` holds any number of items, so a chain of a thousand ``or`` terms is one flat
node, never a thousand nested ones: nothing that walks the tree recurses per term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "EDM_BOOLEAN", "EDM_DATE", "EDM_DATETIMEOFFSET", "EDM_DECIMAL", "EDM_DOUBLE",
    "EDM_INT64", "EDM_NULL", "EDM_STRING", "EDM_TIMEOFDAY", "Binary", "Call", "Field",
    "In", "Junction", "Literal", "Negate", "Negation", "Node", "fields_of",
]  # fmt: skip

EDM_STRING: Final = "Edm.String"
EDM_INT64: Final = "Edm.Int64"
EDM_DECIMAL: Final = "Edm.Decimal"
EDM_DOUBLE: Final = "Edm.Double"
EDM_BOOLEAN: Final = "Edm.Boolean"
EDM_DATE: Final = "Edm.Date"
EDM_DATETIMEOFFSET: Final = "Edm.DateTimeOffset"
EDM_TIMEOFDAY: Final = "Edm.TimeOfDay"
EDM_NULL: Final = "null"


@dataclass(frozen=True, slots=True)
class Field:
    """A property of the dataset: a dimension or a metric, by name."""

    name: str


@dataclass(frozen=True, slots=True)
class Literal:
    """A value the client gave, always bound as a parameter; `edm` is its type."""

    value: Any
    edm: str


@dataclass(frozen=True, slots=True)
class Call:
    """A function such as ``tolower(name)``; `name` is lower case."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Binary:
    """``eq ne gt ge lt le`` or ``add sub mul div mod``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class In:
    target: Node
    values: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Junction:
    kind: str
    """``and`` or ``or``."""
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Negation:
    """Logical ``not``."""

    inner: Node


@dataclass(frozen=True, slots=True)
class Negate:
    """Arithmetic minus: ``-amount``."""

    inner: Node


Node = Field | Literal | Call | Binary | In | Junction | Negation | Negate


def fields_of(node: Node) -> set[str]:
    """Every property `node` names, found without recursion."""
    found: set[str] = set()
    stack: list[Node] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Field):
            found.add(item.name)
        elif isinstance(item, Call):
            stack.extend(item.args)
        elif isinstance(item, Binary):
            stack += (item.left, item.right)
        elif isinstance(item, In):
            stack += (item.target, *item.values)
        elif isinstance(item, Junction):
            stack.extend(item.items)
        elif isinstance(item, Negation | Negate):
            stack.append(item.inner)
    return found
