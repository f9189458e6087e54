"""The OpenAPI document as 3.0.3, for clients that read no 3.1: qlkube above all.

Litestar writes OpenAPI 3.1.0. CrownLabs' GraphQL gateway, qlkube, builds its schema of
this registry from ``/docs/openapi.json`` with openapi-to-graphql 3.0.7, which refuses
anything but 3.0.x (the old Go server served 3.0.3 there). ``downgrade`` renders the
3.1 document as 3.0.3, keyword by keyword:

- ``type: [x, "null"]``, and ``oneOf``/``anyOf`` members ``{"type": "null"}``, become
  ``nullable: true`` (a lone remaining ``$ref`` is wrapped in ``allOf``, the only way
  3.0 lets a reference carry siblings);
- ``const`` becomes a one-value ``enum``, a schema's ``examples`` list its ``example``,
  numeric ``exclusiveMinimum``/``exclusiveMaximum`` the 3.0 boolean form beside
  ``minimum``/``maximum``, ``contentEncoding: base64`` ``format: byte`` and
  ``contentMediaType`` ``format: binary``;
- keywords 3.0 has no place for are dropped (``$schema``, ``$id``, ``$defs``,
  ``prefixItems``, ``if``/``then``/``else``, ``unevaluatedProperties``...), as are
  ``jsonSchemaDialect``, ``webhooks``, ``components.pathItems``, ``info.summary`` and
  ``info.license.identifier``;
- a header without a ``schema`` (3.0 requires one, or ``content``) gets
  ``{"type": "string"}``, and a ``$ref`` with siblings keeps them beside an ``allOf``;
- a nullable property is not ``required``: openapi-to-graphql makes every required
  property a non-null GraphQL field, and a null in the answer would fail the query.

The 3.1 document stays served, at ``/docs/openapi-3.1.json`` (docs/api.md).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from litestar.enums import OpenAPIMediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin

if TYPE_CHECKING:
    from litestar.connection import Request

__all__ = ["OPENAPI_30_PATH", "OPENAPI_31_PATH", "OpenAPI30JsonPlugin", "downgrade"]

OPENAPI_30_PATH = "/openapi.json"
"""Where the 3.0.3 rendering is served, under the OpenAPI path (``/docs``)."""
OPENAPI_31_PATH = "/openapi-3.1.json"
"""Where Litestar's own 3.1.0 document is served, under the OpenAPI path."""

JSON = Any
"""A JSON value: a dict, list, str, int, float, bool or None."""

_DROPPED_SCHEMA_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$dynamicRef",
        "$comment",
        "$defs",
        "$vocabulary",
        "prefixItems",
        "contains",
        "minContains",
        "maxContains",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contentSchema",
    }
)
"""JSON Schema 2020-12 keywords the 3.0 Schema Object has no place for."""

_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_NULL = "null"


def downgrade(document: Mapping[str, JSON]) -> dict[str, JSON]:
    """``document`` (OpenAPI 3.1) as an OpenAPI 3.0.3 document; ``document`` is not changed."""
    source = copy.deepcopy(dict(document))
    components = source.get("components")
    schemas = components.pop("schemas", None) if isinstance(components, dict) else None
    converted: dict[str, JSON] = _walk(source)
    converted["openapi"] = "3.0.3"
    converted.pop("jsonSchemaDialect", None)
    converted.pop("webhooks", None)
    info = converted.get("info")
    if isinstance(info, dict):
        info.pop("summary", None)
        license_ = info.get("license")
        if isinstance(license_, dict):
            license_.pop("identifier", None)
    components = converted.get("components")
    if isinstance(components, dict):
        components.pop("pathItems", None)
        if isinstance(schemas, dict):
            components["schemas"] = {name: _schema(s) for name, s in schemas.items()}
    return converted


def _walk(node: JSON) -> JSON:
    """Everything but schemas: find the schemas and the headers, leave the rest as it is."""
    if isinstance(node, list):
        return [_walk(item) for item in node]
    if not isinstance(node, dict):
        return node
    walked: dict[str, JSON] = {}
    for key, value in node.items():
        if key == "schema":
            walked[key] = _schema(value)
        elif key in ("example", "examples"):
            walked[key] = value  # example values are data, whatever keys they hold
        elif key == "headers" and isinstance(value, dict):
            walked[key] = {name: _header(header) for name, header in value.items()}
        else:
            walked[key] = _walk(value)
    return walked


def _header(header: JSON) -> JSON:
    """A Header Object with a ``schema`` (3.0 requires ``schema`` or ``content``)."""
    header = _walk(header)
    if isinstance(header, dict) and not {"$ref", "schema", "content"} & header.keys():
        header["schema"] = {"type": "string"}
    return header


def _schema(node: JSON) -> JSON:
    """A 3.1 (JSON Schema 2020-12) schema as a 3.0 Schema Object."""
    if isinstance(node, bool):  # 3.0 knows true and false only as additionalProperties
        return {} if node else {"not": {}}
    if not isinstance(node, dict):
        return node
    raw = dict(node)
    nullable = False
    for key in ("oneOf", "anyOf"):
        nullable = _drop_null_members(raw, key) or nullable
    nullable = _nullable_type(raw) or nullable
    schema: dict[str, JSON] = {}
    for key, value in raw.items():
        if key in _DROPPED_SCHEMA_KEYWORDS:
            continue
        if key == "properties" and isinstance(value, dict):
            schema[key] = {name: _schema(sub) for name, sub in value.items()}
        elif key == "additionalProperties" and isinstance(value, bool):
            schema[key] = value
        elif key in ("items", "additionalProperties", "not"):
            schema[key] = _schema(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            schema[key] = [_schema(sub) for sub in value]
        else:
            schema[key] = value
    _optional_when_nullable(schema)
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "examples" in schema:
        examples = schema.pop("examples")
        if isinstance(examples, list) and examples and "example" not in schema:
            schema["example"] = examples[0]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = schema.get(exclusive)
        if isinstance(value, int | float) and not isinstance(value, bool):
            schema[bound] = value
            schema[exclusive] = True
    _content_keywords(schema)
    if schema.get("type") == "array" and "items" not in schema:
        schema["items"] = {}
    if nullable:
        schema["nullable"] = True
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
    return _ref_with_siblings(schema)


def _optional_when_nullable(schema: dict[str, JSON]) -> None:
    """Leave the nullable properties out of ``required``.

    openapi-to-graphql makes a required property a non-null GraphQL field whatever
    ``nullable`` says, and a null answer (``/meta``'s ``blocked`` of every image that is
    served) then fails the whole query. Not required only says the key may be absent.
    """
    required, properties = schema.get("required"), schema.get("properties")
    if not isinstance(required, list) or not isinstance(properties, dict):
        return
    kept = [
        name
        for name in required
        if not (isinstance(properties.get(name), dict) and properties[name].get("nullable"))
    ]
    if kept:
        schema["required"] = kept
    else:
        del schema["required"]  # 3.0: required has at least one name


def _is_null(schema: JSON) -> bool:
    """``{"type": "null"}`` (or ``["null"]``, ``const: null``), perhaps with a title."""
    if not isinstance(schema, dict):
        return False
    if schema.get("type") in (_NULL, [_NULL]):
        return True
    return "const" in schema and schema["const"] is None


def _nullable_type(schema: dict[str, JSON]) -> bool:
    """``type: [x, "null"]`` as ``type: x``; whether null was one of the types."""
    types = schema.get("type")
    if not isinstance(types, list):
        if types == _NULL:  # only null: 3.0 says it with an enum
            del schema["type"]
            schema["enum"] = [None]
            return True
        return False
    others = [t for t in types if t != _NULL]
    if len(others) == 1:
        schema["type"] = others[0]
    else:
        del schema["type"]
        if others:
            schema["anyOf"] = [{"type": t} for t in others] + schema.get("anyOf", [])
    return len(others) < len(types)


def _drop_null_members(schema: dict[str, JSON], key: str) -> bool:
    """``oneOf``/``anyOf`` without their null members; whether there was one.

    One member left: it stands for the list (merged into the schema, or, a ``$ref``,
    as the one member of an ``allOf``).
    """
    members = schema.get(key)
    if not isinstance(members, list):
        return False
    others = [m for m in members if not _is_null(m)]
    if len(others) == len(members):
        return False
    if len(others) != 1:
        schema[key] = others
        return True
    del schema[key]
    (member,) = others
    if isinstance(member, dict) and "$ref" in member:
        schema["allOf"] = [member, *schema.get("allOf", [])]
    elif isinstance(member, dict):
        for name, value in member.items():
            schema.setdefault(name, value)
    return True


def _content_keywords(schema: dict[str, JSON]) -> None:
    """``contentEncoding``/``contentMediaType`` as the 3.0 string formats ``byte``/``binary``."""
    encoding = schema.pop("contentEncoding", None)
    media_type = schema.pop("contentMediaType", None)
    if "format" in schema:
        return
    if encoding == "base64":
        schema["format"] = "byte"
    elif media_type is not None:
        schema["format"] = "binary"


def _ref_with_siblings(schema: dict[str, JSON]) -> dict[str, JSON]:
    """3.0 ignores what sits beside a ``$ref``: move the reference into an ``allOf``."""
    if "$ref" not in schema or len(schema) == 1:
        return schema
    reference = {"$ref": schema.pop("$ref")}
    schema["allOf"] = [reference, *schema.get("allOf", [])]
    return schema


class OpenAPI30JsonPlugin(OpenAPIRenderPlugin):
    """Serves ``downgrade`` of the app's document as JSON (built once, on the first request)."""

    def __init__(self, *, path: str = OPENAPI_30_PATH) -> None:
        super().__init__(path=path, media_type=OpenAPIMediaType.OPENAPI_JSON)
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = self.render_json(request, downgrade(openapi_schema))
        return self._rendered
