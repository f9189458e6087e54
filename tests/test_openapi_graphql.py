"""The OpenAPI document as CrownLabs' GraphQL gateway, qlkube, reads it.

qlkube fetches ``http://cloudimg-registry/docs/openapi.json`` at start-up and builds a
GraphQL schema from it with openapi-to-graphql 3.0.7 (which takes OpenAPI 3.0.x only),
then answers its queries by calling the registry. The test does the same with the real
library from npm, against a real server, and compares the answers with ``/reg``'s. The
converter from Litestar's 3.1 document to 3.0.3 (``cloudimg.api.openapi30``) is tested
on its own below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudimg.api.openapi30 import downgrade
from tests.conftest import RunningServer, upload
from tests.support import exclusively, random_image

LIBRARY = "openapi-to-graphql@3.0.7"
GRAPHQL = "graphql@16"
"""openapi-to-graphql 3.0.7's peer dependency (``graphql: ^16.0.0``)."""

QLKUBE = r"""
'use strict';
// What qlkube does with the registry: fetch the document, build the schema with its
// options (index.js and schema.js of CrownLabs' qlkube), answer queries through it.
const fs = require('fs');
const { createGraphQLSchema } = require('openapi-to-graphql');
const { graphql, printSchema } = require('graphql');

async function main() {
  const [registryUrl, queriesFile] = process.argv.slice(2);
  const response = await fetch(`${registryUrl}/docs/openapi.json`);
  if (!response.ok) throw new Error(`GET /docs/openapi.json: ${response.status}`);
  const oas = await response.json();
  const { schema } = await createGraphQLSchema(oas, {
    baseUrl: registryUrl,
    viewer: false,
    headers: { 'Content-Type': 'application/json' },
    tokenJSONpath: '$.token',
    simpleEnumValues: true,
    operationIdFieldNames: true,
  });
  const answers = {};
  for (const [name, source] of Object.entries(JSON.parse(fs.readFileSync(queriesFile)))) {
    answers[name] = await graphql({ schema, source });
  }
  process.stdout.write(JSON.stringify({ schema: printSchema(schema), answers }));
}

main().catch((error) => {
  process.stderr.write(`Registry OAS fetch failure: ${(error && error.stack) || error}\n`);
  process.exit(1);
});
"""


@pytest.fixture(scope="module")
def backend() -> str:
    """The document and the gateway, not a catalog backend."""
    return "sqlite"


@pytest.fixture(scope="session")
def node_modules(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``LIBRARY`` and ``GRAPHQL`` installed with npm, once, into pytest's cache.

    Each pytest-xdist worker has this session fixture: the first to get the lock installs,
    the others wait for it and find the modules there.
    """
    assert pytestconfig.cache is not None
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip(f"no npm and node to install and run {LIBRARY} with")
    home = pytestconfig.cache.mkdir("openapi-to-graphql-3.0.7")
    modules = home / "node_modules"
    installed = modules / "openapi-to-graphql" / "package.json"
    if not installed.exists():
        with exclusively(home / "install.lock"):
            if not installed.exists():  # not installed by the worker that held the lock
                _install(npm, modules, tmp_path_factory.mktemp("npm"))
    return modules


def _install(npm: str, modules: Path, scratch: Path) -> None:
    """``npm install`` of ``LIBRARY`` and ``GRAPHQL`` into ``modules``, whole or not at all."""
    (scratch / "package.json").write_text('{"private": true}\n')
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", LIBRARY, GRAPHQL],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    partial = modules.with_name(f"node_modules.{os.getpid()}")
    shutil.move(scratch / "node_modules", partial)
    if modules.exists():  # a node_modules without the library: not one renamed here
        shutil.rmtree(modules)
    partial.rename(modules)  # whole or not at all, also for a run killed meanwhile


def qlkube(
    node_modules: Path, server: RunningServer, tmp_path: Path, queries: dict[str, str]
) -> dict[str, Any]:
    """The schema qlkube builds (as SDL) and its answers to ``queries``, by name."""
    script = tmp_path / "qlkube.js"
    script.write_text(QLKUBE)
    queries_file = tmp_path / "queries.json"
    queries_file.write_text(json.dumps(queries))
    done = subprocess.run(
        ["node", str(script), server.base_url, str(queries_file)],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    for name, answer in result["answers"].items():
        assert "errors" not in answer, (name, answer)
    return result


def graphql_type(sdl: str, name: str) -> dict[str, str]:
    """The fields of the type ``name`` of ``sdl``, with their types (descriptions left out)."""
    lines = sdl.splitlines()
    start = lines.index(f"type {name} {{")
    fields = {}
    in_description = False
    for line in lines[start + 1 :]:
        text = line.strip()
        if text == "}":
            break
        if text.startswith('"""'):
            in_description = not (in_description or (len(text) > 3 and text.endswith('"""')))
            continue
        if in_description or not text:
            continue
        found = re.fullmatch(r"(\w+)(?:\(.*\))?: (.+)", text)
        assert found is not None, text
        fields[found.group(1)] = found.group(2)
    return fields


def test_the_gateway_builds_its_schema_and_answers_as_reg(
    node_modules: Path, server: RunningServer, tmp_path: Path
) -> None:
    image = random_image(64 * 1024)
    with server.client() as http:
        for tag in ("20.04", "22.04"):
            response = upload(http, f"/reg/gateway/ubuntu/{tag}", image, {"os": "ubuntu"})
            assert response.status_code == 201, response.text
        reg = {
            "repos": http.get("/reg").json(),
            "images": http.get("/reg/gateway").json(),
            "images_details": http.get("/reg/gateway", params={"details": "true"}).json(),
            "tags": http.get("/reg/gateway/ubuntu").json(),
            "tags_page": http.get(
                "/reg/gateway/ubuntu", params={"details": "true", "limit": "1"}
            ).json(),
            "meta": http.get("/reg/gateway/ubuntu/22.04/meta").json(),
            "query": http.get(
                "/reg/_query", params={"meta": "os=ubuntu", "repo_prefix": "gateway"}
            ).json(),
            "events": http.get("/reg/_events", params={"after": 0, "limit": 1000}).json(),
        }
    meta_fields = (
        "success data imagePath digest sha256 size created updated format virtualSize "
        "blocked { rule since }"
    )
    result = qlkube(
        node_modules,
        server,
        tmp_path,
        {
            "repos": "{ getRepos { success data } }",
            "images": '{ getImages(repo: "gateway") { success data } }',
            "images_details": '{ getImages(repo: "gateway", details: true) { success data next } }',
            "tags": '{ getImageTags(repo: "gateway", image: "ubuntu") { success data } }',
            "tags_page": '{ getImageTags(repo: "gateway", image: "ubuntu", details: true, '
            "limit: 1) { success data next } }",
            "meta": '{ getImageMeta(repo: "gateway", image: "ubuntu", tag: "22.04") '
            f"{{ {meta_fields} }} }}",
            "query": '{ queryTags(meta: ["os=ubuntu"], repoPrefix: "gateway") '
            "{ success next data { repo image tag digest size meta } } }",
            "events": "{ getEvents(after: 0, limit: 1000) "
            "{ success next data { id type subject sequence data } } }",
        },
    )
    answers = {name: next(iter(a["data"].values())) for name, a in result["answers"].items()}
    assert answers["repos"] == reg["repos"]
    assert "gateway" in answers["repos"]["data"]
    assert answers["images"] == reg["images"] == {"success": True, "data": ["ubuntu"]}
    assert answers["images_details"] == reg["images_details"]
    assert answers["tags"] == reg["tags"] == {"success": True, "data": ["20.04", "22.04"]}
    assert answers["tags_page"] == reg["tags_page"]
    assert answers["tags_page"]["next"] == "20.04"
    meta = dict(reg["meta"])
    meta["virtualSize"] = meta.pop("virtual_size")
    assert answers["meta"] == {key: meta[key] for key in answers["meta"]}
    assert answers["meta"]["blocked"] is None  # a nullable field, not a failed query
    assert answers["meta"]["data"] == {"os": "ubuntu"}
    # The metadata query, as a GraphQL query with its repeatable parameters as lists.
    fields = ("repo", "image", "tag", "digest", "size", "meta")
    wanted = [{key: row[key] for key in fields} for row in reg["query"]["data"]]
    assert answers["query"] == {"success": True, "next": None, "data": wanted}
    assert [row["tag"] for row in wanted] == ["20.04", "22.04"]
    # The change events' pull, typed: the envelope's fields, its data as JSON.
    fields = ("id", "type", "subject", "sequence", "data")
    events = [{key: event[key] for key in fields} for event in reg["events"]["data"]]
    assert answers["events"] == {"success": True, "next": reg["events"]["next"], "data": events}
    assert {"subject": "gateway/ubuntu:22.04", "type": "io.cloudimg.tag.created"}.items() <= (
        events[-1].items()
    )


def test_the_listings_are_graphql_types_not_a_json_scalar(
    node_modules: Path, server: RunningServer, tmp_path: Path
) -> None:
    sdl = qlkube(node_modules, server, tmp_path, {})["schema"]
    query = graphql_type(sdl, "Query")
    for operation in ("getRepos", "getImages", "getImageTags", "getImageMeta"):
        assert query[operation] not in ("JSON", "JSON!"), (operation, query[operation])
    assert graphql_type(sdl, query["getRepos"])["data"] == "[String]!"
    for listing in ("getImages", "getImageTags"):
        fields = graphql_type(sdl, query[listing])
        assert fields["success"] == "Boolean!"
        assert fields["next"] == "String"
        assert fields["data"].startswith("[")  # names, or with details=true objects
    meta = graphql_type(sdl, query["getImageMeta"])
    # Null in answers: nullable in GraphQL, else a null would fail the whole query.
    for nullable in ("blocked", "format", "virtualSize"):
        assert not meta[nullable].endswith("!"), (nullable, meta[nullable])
    assert meta["digest"] == "String!"


def test_both_documents_are_served_with_the_same_operations(client: httpx.Client) -> None:
    old = client.get("/docs/openapi.json")
    new = client.get("/docs/openapi-3.1.json")
    assert old.status_code == new.status_code == 200
    assert old.json()["openapi"] == "3.0.3"
    assert new.json()["openapi"] == "3.1.0"

    def operations(document: dict[str, Any]) -> dict[tuple[str, str], str]:
        return {
            (path, method): operation["operationId"]
            for path, item in document["paths"].items()
            for method, operation in item.items()
        }

    assert operations(old.json()) == operations(new.json())
    assert {"GetRepos", "GetImages", "GetImageTags", "GetImageMeta"} <= set(
        operations(old.json()).values()
    )


def test_the_api_reference_says_which_document_is_which() -> None:
    reference = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    assert "`/docs/openapi.json`" in reference
    assert "3.0.3" in reference
    assert "`/docs/openapi-3.1.json`" in reference
    assert "qlkube" in reference


# -- the converter on its own -------------------------------------------------------------


def document(schemas: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {},
        "components": {"schemas": schemas},
        **extra,
    }


def converted_schema(schema: dict[str, Any]) -> Any:
    return downgrade(document({"S": schema}))["components"]["schemas"]["S"]


def test_the_version_and_the_document_keywords_of_31() -> None:
    source = document(
        {},
        jsonSchemaDialect="https://json-schema.org/draft/2020-12/schema",
        webhooks={"x": {}},
    )
    source["info"].update(summary="s", license={"name": "MIT", "identifier": "MIT"})
    source["components"]["pathItems"] = {"p": {}}
    before = json.dumps(source, sort_keys=True)
    result = downgrade(source)
    assert json.dumps(source, sort_keys=True) == before  # the source is not changed
    assert result["openapi"] == "3.0.3"
    assert "jsonSchemaDialect" not in result
    assert "webhooks" not in result
    assert result["info"] == {"title": "t", "version": "1", "license": {"name": "MIT"}}
    assert "pathItems" not in result["components"]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        (
            {"oneOf": [{"type": "integer"}, {"type": "null"}], "description": "d"},
            {"type": "integer", "description": "d", "nullable": True},
        ),
        (
            {"anyOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}]},
            {"allOf": [{"$ref": "#/components/schemas/B"}], "nullable": True},
        ),
        (
            {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
            {"oneOf": [{"type": "string"}, {"type": "integer"}], "nullable": True},
        ),
        (
            {"type": ["string", "integer"]},
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        ),
        ({"type": "null"}, {"enum": [None], "nullable": True}),
        ({"const": "x"}, {"enum": ["x"]}),
        (
            {"oneOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]},
            {"type": "string", "enum": ["a", "b", None], "nullable": True},
        ),
        ({"type": "string", "examples": ["a", "b"]}, {"type": "string", "example": "a"}),
        (
            {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            {
                "type": "integer",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 10,
                "exclusiveMaximum": True,
            },
        ),
        ({"type": "string", "contentEncoding": "base64"}, {"type": "string", "format": "byte"}),
        (
            {"type": "string", "contentMediaType": "application/octet-stream"},
            {"type": "string", "format": "binary"},
        ),
        (
            {"$ref": "#/components/schemas/B", "description": "d"},
            {"allOf": [{"$ref": "#/components/schemas/B"}], "description": "d"},
        ),
        ({"type": "array"}, {"type": "array", "items": {}}),
        (
            {
                "type": "object",
                "properties": {"a": True, "b": False},
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"a": {}, "b": {"not": {}}},
                "additionalProperties": False,
            },
        ),
        (
            {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}},
            {"type": "array", "items": {"type": "string"}},
        ),
        (
            {"$schema": "x", "$id": "y", "$defs": {}, "type": "object", "if": {}, "then": {}},
            {"type": "object"},
        ),
    ],
)
def test_schema_keywords_of_31(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert converted_schema(schema) == expected


def test_nested_schemas_are_converted_and_nullable_properties_not_required() -> None:
    schema = {
        "type": "object",
        "required": ["a", "b", "c"],
        "properties": {
            "a": {"type": "string"},
            "b": {"oneOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}]},
            "c": {
                "type": "array",
                "items": {"type": "object", "properties": {"d": {"type": ["integer", "null"]}}},
            },
            "schema": {"type": ["boolean", "null"]},  # a property named like the keyword
        },
        "additionalProperties": {"const": 1},
    }
    assert converted_schema(schema) == {
        "type": "object",
        "required": ["a", "c"],
        "properties": {
            "a": {"type": "string"},
            "b": {"allOf": [{"$ref": "#/components/schemas/B"}], "nullable": True},
            "c": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"d": {"type": "integer", "nullable": True}},
                },
            },
            "schema": {"type": "boolean", "nullable": True},
        },
        "additionalProperties": {"enum": [1]},
    }
    only_nullable = {"type": "object", "required": ["x"], "properties": {"x": {"type": "null"}}}
    assert "required" not in converted_schema(only_nullable)  # 3.0: a non-empty list or none


def test_headers_parameters_and_bodies_of_the_paths() -> None:
    operation = {
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "schema": {"oneOf": [{"type": "integer"}, {"type": "null"}]},
            }
        ],
        "requestBody": {
            "content": {"application/json": {"schema": {"type": "object", "examples": [{}]}}}
        },
        "responses": {
            "201": {
                "description": "created",
                "headers": {
                    "ETag": {"description": "e", "required": True},
                    "Typed": {"schema": {"type": "integer"}},
                    "Shared": {"$ref": "#/components/headers/Shared"},
                },
                "content": {
                    "application/json": {
                        "schema": {"type": ["string", "null"]},
                        "examples": {"one": {"value": {"type": ["kept", "as data"]}}},
                    }
                },
            }
        },
    }
    result = downgrade(document({}, paths={"/x": {"post": operation}}))
    post = result["paths"]["/x"]["post"]
    assert post["parameters"][0]["schema"] == {"type": "integer", "nullable": True}
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"type": "object", "example": {}}
    created = post["responses"]["201"]
    assert created["headers"] == {
        "ETag": {"description": "e", "required": True, "schema": {"type": "string"}},
        "Typed": {"schema": {"type": "integer"}},
        "Shared": {"$ref": "#/components/headers/Shared"},
    }
    content = created["content"]["application/json"]
    assert content["schema"] == {"type": "string", "nullable": True}
    assert content["examples"] == {"one": {"value": {"type": ["kept", "as data"]}}}
