"""The OData service document and ``$metadata`` (CSDL XML) of the datasets a key may read.

One entity type per dataset: a ``Key`` (the declared key, else every dimension), Edm types
from the backend's real column types, ``Nullable="false"`` only where the backend proves
a field is never null (`gateway.data.schema`), never the tenant column. Capabilities
annotations say what the feeds do: the filter functions, counting, top and skip, no
expand.
"""

from __future__ import annotations

from typing import Final
from xml.sax.saxutils import quoteattr

from aiohttp import web

from gateway.data.datasets import Dataset
from gateway.data.edm import edm_type
from gateway.data.filter_compiler import FUNCTIONS

__all__ = ["metadata_xml", "type_name"]

_HEAD: Final = [
    '<?xml version="1.0" encoding="utf-8"?>',
    '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
    '<edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/'
    'Org.OData.Capabilities.V1.xml">',
    '<edmx:Include Namespace="Org.OData.Capabilities.V1" Alias="Capabilities"/>',
    "</edmx:Reference>",
    "<edmx:DataServices>",
    '<Schema Namespace="Tollway" xmlns="http://docs.oasis-open.org/odata/ns/edm">',
]
_SET_ANNOTATIONS: Final = [
    '<Annotation Term="Capabilities.CountRestrictions"><Record>'
    '<PropertyValue Property="Countable" Bool="true"/></Record></Annotation>',
    '<Annotation Term="Capabilities.TopSupported" Bool="true"/>',
    '<Annotation Term="Capabilities.SkipSupported" Bool="true"/>',
    '<Annotation Term="Capabilities.ExpandRestrictions"><Record>'
    '<PropertyValue Property="Expandable" Bool="false"/></Record></Annotation>',
]
_CONTAINER_ANNOTATIONS: Final = [
    '<Annotation Term="Capabilities.FilterFunctions"><Collection>'
    + "".join(f"<String>{name}</String>" for name in FUNCTIONS)
    + "</Collection></Annotation>",
    '<Annotation Term="Capabilities.ConformanceLevel">'
    "<EnumMember>Capabilities.ConformanceLevelType/Minimal</EnumMember></Annotation>",
]


def type_name(dataset: Dataset) -> str:
    return "".join(part.capitalize() for part in dataset.config.name.split("_")) or "Row"


def metadata_xml(visible: dict[str, Dataset]) -> web.Response:
    """The CSDL document for `visible` (each already described)."""
    lines = list(_HEAD)
    for dataset in visible.values():
        lines.append(f"<EntityType Name={quoteattr(type_name(dataset))}>")
        refs = "".join(f"<PropertyRef Name={quoteattr(k)}/>" for k in dataset.key)
        lines.append(f"<Key>{refs}</Key>")
        for name in (*dataset.dimensions, *dataset.metrics):
            edm, facets = edm_type(dataset.types.get(name))
            extra = "".join(f" {k}={quoteattr(v)}" for k, v in facets.items())
            nullable = "" if dataset.nullable(name) else ' Nullable="false"'
            lines.append(
                f"<Property Name={quoteattr(name)} Type={quoteattr(edm)}{extra}{nullable}/>"
            )
        lines.append("</EntityType>")
    lines.append('<EntityContainer Name="Container">')
    for name, dataset in visible.items():
        entity_type = quoteattr("Tollway." + type_name(dataset))
        lines.append(f"<EntitySet Name={quoteattr(name)} EntityType={entity_type}>")
        lines += _SET_ANNOTATIONS
        lines.append("</EntitySet>")
    lines += _CONTAINER_ANNOTATIONS
    lines += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
    return web.Response(
        text="\n".join(lines), content_type="application/xml", headers={"OData-Version": "4.0"}
    )
