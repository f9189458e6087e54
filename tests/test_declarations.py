"""The app's route handlers declare what they take, so Litestar has nothing to infer.

Litestar 2.25 warns (``LitestarDeprecationWarning``) about a path or query parameter
declared by its name and type alone and about a dependency it infers from a parameter's
name, and Litestar 3 refuses them: every handler says ``FromPath[...]``,
``FromQuery[...]`` (or ``Annotated[..., QueryParameter(...)]``) and
``NamedDependency[...]``. The app is built here with every optional face it has on
(web pages, write tokens, read auth, a policy, change events, download redirects), and
its OpenAPI schema generated, with every warning an error. ``pyproject.toml``'s
``filterwarnings`` makes the same deprecations errors in any other test that builds the
app (``tests/test_scopes_matrix.py`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from litestar import Litestar

from cloudimg.api.app import create_app
from cloudimg.api.auth import load_registry_auth
from cloudimg.config import Settings


def _settings(directory: Path) -> Settings:
    """Settings with every optional face and guard of the app on."""
    (directory / "tokens").write_text("writer tok-declarations-0123456789\n")
    (directory / "users").write_text("reader:pw-declarations\n")
    policy = {"tokens": {"writer": [{"names": ["*/*"], "actions": ["pull", "push"]}]}}
    (directory / "policy.json").write_text(json.dumps(policy))
    (directory / "hook-secret").write_text("whsec_" + "A" * 44 + "\n")
    events = {
        "source": "https://registry.test",
        "endpoints": [
            {"name": "all", "url": "http://127.0.0.1:9/all", "secret_file": "hook-secret"}
        ],
    }
    (directory / "events.json").write_text(json.dumps(events))
    return Settings(
        data_root=directory / "data",
        www_prefix="/www/",
        write_token_file=directory / "tokens",
        read_auth="basic",
        read_credentials_file=directory / "users",
        policy_file=directory / "policy.json",
        events_config=directory / "events.json",
        web=True,
        redirect_downloads=True,
        immutable_tags=("release-*",),
    )


def test_building_the_app_warns_of_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with warnings.catch_warnings():
        # Every warning, of any module, raises here: none is the project's to ignore.
        warnings.simplefilter("error")
        app = create_app(settings, load_registry_auth(settings))
        schema = app.openapi_schema.to_schema()
    assert isinstance(app, Litestar)
    # The app built is the whole app: the faces the settings turn on are routed.
    paths = {route.path for route in app.routes}
    assert "/www/reg/_events" in paths
    assert "/www/ui/{repo:str}/{image:str}/{tag:str}" in paths
    assert "/v2/{repo:str}/{image:str}/blobs/uploads/{session:str}" in paths
    assert "/www/reg/{repo}/{image}/{tag}" in schema["paths"]


_DOCUMENT = """
import json, sys
from pathlib import Path
from cloudimg.api.app import create_app
from cloudimg.config import Settings

app = create_app(Settings(data_root=Path(sys.argv[1])), None)
sys.stdout.write(json.dumps(app.openapi_schema.to_schema()))
"""


def test_the_openapi_document_is_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    # Clients are generated from it and it is diffed between releases: two processes
    # with other hash seeds must write it alike (the 201's headers once followed them).
    documents = []
    for seed in ("1", "2", "3"):
        result = subprocess.run(
            [sys.executable, "-c", _DOCUMENT, str(tmp_path / "data")],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            check=True,
            timeout=120,
        )
        documents.append(result.stdout)
    assert documents[0] == documents[1] == documents[2]
    created = json.loads(documents[0])["paths"]["/reg/{repo}/{image}/{tag}"]["put"]["responses"]
    assert list(created["201"]["headers"]) == ["Location", "ETag", "Repr-Digest"]
