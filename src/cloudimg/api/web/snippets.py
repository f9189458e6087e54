"""The "use it" panel of a tag: copy-ready text that boots or converts exactly its bytes.

Everything here is built from validated names, hex digests and the catalog's format,
so no client-supplied text reaches the snippets except the host the page was asked
for, and only once ``cloudimg.config.is_host_port`` accepted it (else the operator's
``--public-url`` or ``HOST_PLACEHOLDER`` stands there). It is quoted all the same, for
YAML (a JSON string is a YAML double-quoted scalar) and for the shell (``shlex.quote``).
The page escapes all of it again for HTML.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass

from cloudimg.catalog import TagInfo

__all__ = [
    "FORMAT_PLACEHOLDER",
    "HOST_PLACEHOLDER",
    "ContainerDisk",
    "UseIt",
    "container_disk",
    "datavolume_name",
    "rollback",
    "use_it",
]

_GIB = 1024**3
_DNS_LABEL = 63
# qemu's block driver names (raw, qcow2, vmdk, vpc, vhdx, qed, ...): a format that
# does not look like one is treated as unknown rather than put into a shell command.
_FORMAT_NAME = re.compile(r"[a-z0-9]{1,16}")
FORMAT_PLACEHOLDER = "FORMAT"
"""What stands after ``-f`` when the catalog does not know the format yet."""
HOST_PLACEHOLDER = "REGISTRY_HOST"
"""What stands for the registry's host when neither ``--public-url`` nor the page's
``Host`` gives one that can go into a command."""


@dataclass(frozen=True, slots=True)
class UseIt:
    """The panel's texts."""

    url: str
    """The digest-pinned URL: serves exactly these bytes for as long as the image holds them."""
    datavolume: str
    """A KubeVirt CDI DataVolume (YAML) importing the pinned URL, checked against its sha256."""
    qemu_img_info: str
    qemu_img_convert: str
    """``qemu-img convert`` to a raw file, with ``-f FORMAT`` when the format is unknown."""
    format_known: bool
    pull: str
    """``cloudimg pull`` of the pinned bytes into a file (docs/client.md on the client)."""


def use_it(info: TagInfo, api_url: str, *, read_auth: bool = False) -> UseIt:
    """The snippets of ``info`` for a registry whose API is at ``api_url`` (``http://h/reg``)."""
    url = f"{api_url}/{info.repo}/{info.image}/sha256:{info.sha256}"
    known = info.format is not None and _FORMAT_NAME.fullmatch(info.format) is not None
    image_format = info.format if known and info.format else FORMAT_PLACEHOLDER
    output = f"{info.image}-{info.tag}.raw"
    convert = f"qemu-img convert -f {image_format} -m 1 -O raw {shlex.quote(url)} {output}"
    return UseIt(
        url=url,
        datavolume=_datavolume(info, url, read_auth=read_auth),
        qemu_img_info=f"qemu-img info {shlex.quote(url)}",
        qemu_img_convert=convert,
        format_known=known,
        pull=f"cloudimg pull --server {shlex.quote(api_url)} "
        f"{info.repo}/{info.image}@sha256:{info.sha256} {output}",
    )


def rollback(info: TagInfo, api_url: str, digest: str) -> str:
    """``cloudimg tag`` that points the tag of ``info`` back at the bytes ``digest``
    (blake3 hex, from its history) names: the server's retag, run by the client
    (docs/client.md), which needs a write token (``CLOUDIMG_TOKEN`` or ``--token-file``)."""
    name = f"{info.repo}/{info.image}"
    return f"cloudimg tag --server {shlex.quote(api_url)} {name}@blake3:{digest} {name}:{info.tag}"


@dataclass(frozen=True, slots=True)
class ContainerDisk:
    """The tag's bytes as a KubeVirt containerDisk from the OCI face (docs/oci.md)."""

    reference: str
    """``<host>/<repo>/<image>@sha256:<manifest digest>``: what ``containerDisk.image`` takes."""
    volume: str
    """A VM's ``volumes:`` entry (YAML) booting from that reference."""


def container_disk(info: TagInfo, host: str, manifest_sha256: str) -> ContainerDisk:
    """The containerDisk of ``info`` at registry ``host`` (``h:8080``) whose generated
    manifest has the sha256 ``manifest_sha256`` (``Catalog.oci_digests``)."""
    reference = f"{host}/{info.repo}/{info.image}@sha256:{manifest_sha256}"
    volume = "\n".join(
        [
            "volumes:",
            "  - name: root",
            "    containerDisk:",
            f"      image: {json.dumps(reference)}",
        ]
    )
    return ContainerDisk(reference, volume + "\n")


def datavolume_name(image: str, tag: str) -> str:
    """A DNS-1123 label from the image and tag names (``ubuntu`` + ``22.04``: ``ubuntu-22-04``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{image}-{tag}")
    return re.sub(r"-{2,}", "-", name)[:_DNS_LABEL].strip("-")


def _storage_request(info: TagInfo) -> tuple[str, str | None]:
    """The PVC size (whole GiB) and, when the virtual size is unknown, a comment saying so.

    CDI adds the file system's overhead itself for ``spec.storage``.
    """
    if info.virtual_size is not None:
        return f"{max(1, math.ceil(info.virtual_size / _GIB))}Gi", None
    guess = f"{max(1, math.ceil(info.size / _GIB))}Gi"
    return guess, "not inspected: make this at least the image's virtual size (qemu-img info)"


def _datavolume(info: TagInfo, url: str, *, read_auth: bool) -> str:
    storage, note = _storage_request(info)
    lines = [
        "apiVersion: cdi.kubevirt.io/v1beta1",
        "kind: DataVolume",
        "metadata:",
        f"  name: {datavolume_name(info.image, info.tag)}",
        "spec:",
        "  source:",
        "    http:",
        f"      url: {json.dumps(url)}",
        f'      checksum: "sha256:{info.sha256}"',
    ]
    if read_auth:
        lines.append(
            "      # secretRef: a Secret with accessKeyId and secretKey (read credentials)"
        )
    lines += ["  storage:", "    resources:", "      requests:"]
    if note is not None:
        lines.append(f"        # {note}")
    lines.append(f"        storage: {storage}")
    return "\n".join(lines) + "\n"
