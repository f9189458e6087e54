#!/usr/bin/env python3
"""How many ``cloudimg`` modules a ``/reg`` upload, a ``/v2`` push and a gc run cross.

Runs three walks in this one process with a profiler on every thread
(``sys.setprofile`` and ``threading.setprofile``, installed before cloudimg is
imported, so every thread the app starts later is seen) and prints, per walk:

- **modules**: the distinct modules entered whose ``__name__`` starts with ``cloudimg.``;
- **crossings**: calls whose calling ``cloudimg`` module differs from the called one,
  as distinct (caller, callee) pairs and as the total number of such calls;
- **back-and-forth**: calls that enter a module A from another module while A is
  already deeper on the same (logical) stack, i.e. A -> B -> ... -> A, as distinct
  (A, B) pairs (B: the module the earlier A called out to), with the most frequent
  chains as examples.

The walks, driven only through stable public entry points (module names are read
from frames, nothing of cloudimg's layout is imported by name except the app factory
``cloudimg.api.app.create_app`` and the ``cloudimg`` console script):

1. ``upload``: one raw ``PUT /reg/walk/disk/v1`` of a qcow2 made by ``qemu-img create``
   (a raw image of a few MiB without qemu-img), to the app of ``create_app`` over a temp
   data root and its SQLite catalog, driven in-process by httpx's ``ASGITransport``
   with the app's lifespan run around it;
2. ``push``: the same disk pushed to ``/v2/walk/pushed``: an upload session (POST,
   PATCH with ``Content-Range``, PUT with the digest), the ``{}`` config blob (POST,
   PUT with the digest and the body) and an artifact manifest PUT by tag;
3. ``gc``: ``cloudimg gc --grace 0 --json --quiet`` over that data root through click's
   ``CliRunner``, after the app stopped (an abandoned ``/v2`` upload session and a
   deleted tag leave it something to reclaim).

What is counted, and why the numbers repeat:

- Only the walk's own work: a call counts when the walk's context variable is set in
  the context it runs in (the driver sets it around the walk's requests; tasks copy it
  at creation, ``asyncio.to_thread`` into its thread), or when it runs on a thread,
  or an executor work item, started from such a context. The app start, the untraced
  warm-up and the background containerDisk hasher the app starts in its lifespan (woken
  by every commit, it may run on the event loop during a request) are not counted: the
  hasher's task was created before any walk, so its context has no walk. The layer
  hash a request itself starts (a pull that finds none) would count.
- The state each walk starts from is made the same on every run: a warm-up upload
  and push of another disk first (so no walk pays a first request's one-off work:
  pooled connections, lazily filled caches), and after each request an untraced
  ``GET /v2/.../manifests/<tag>``, which waits for the layer hash of the disk, so the
  next walk never finds it half done.
- A coroutine or generator resumed after an ``await`` or ``yield`` fires a profiler
  "call" again: only a frame's first entry (the frame is at its first ``RESUME``) is a
  call here, so the totals do not depend on how often I/O made a coroutine wait.
- Module bodies run by an import (a frame of ``importlib._bootstrap`` below it) are
  not calls.
- The caller of a call is the nearest ``cloudimg`` frame below it on its logical
  stack: the Python stack, continued across SQLAlchemy's greenlets (into the frame
  that switched to the greenlet), across tasks (into the stack that created the task)
  and across thread-pool work items and threads (into the stack that submitted or
  started them). Non-``cloudimg`` frames between (Litestar, SQLAlchemy, click, asyncio)
  are skipped, so cloudimg -> Litestar -> cloudimg is one crossing between the two
  cloudimg modules.

Caveats: the counts are of this scenario (a small qcow2, SQLite, no auth) and of
Python frames only: a call made from C code without a Python caller in cloudimg
(a callback of a C library on its own thread) starts a stack of its own.

    python benchmarks/call_walks.py [--json] [--top 5] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextvars
import dis
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import greenlet
except ImportError:  # pragma: no cover - SQLAlchemy's asyncio extra brings it
    greenlet = None

PREFIX = "cloudimg."
WALKS = ("upload", "push", "gc")
_MIB = 1024 * 1024

# -- the profiler ------------------------------------------------------------------------

_WALK: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_walk", default=None)
"""The walk the code running in this context belongs to (None: not counted)."""


@dataclass
class Walk:
    """What one walk entered and crossed."""

    modules: set[str] = field(default_factory=set)
    crossings: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    back_and_forth: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    chains: dict[tuple[str, str], collections.Counter[tuple[str, ...]]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    calls: int = 0


_walks: dict[str, Walk] = {name: Walk() for name in WALKS}
_lock = threading.Lock()
_first_resume: dict[types.CodeType, int] = {}
_origins = threading.local()
"""Per thread: ``item``, the walk and the chain that submitted the work item it runs now."""
_task_chains: weakref.WeakKeyDictionary[asyncio.Task[Any], tuple[str, ...]] = (
    weakref.WeakKeyDictionary()
)
_thread_origins: weakref.WeakKeyDictionary[threading.Thread, tuple[str | None, tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _entry_offset(code: types.CodeType) -> int:
    """Where a fresh frame of ``code`` stands at its profiler "call": its first RESUME."""
    offset = _first_resume.get(code)
    if offset is None:
        offset = next((i.offset for i in dis.get_instructions(code) if i.opname == "RESUME"), 0)
        _first_resume[code] = offset
    return offset


def _is_boundary(frame: types.FrameType) -> str | None:
    """Where a stack hands over to another: "task", "item" or None."""
    code = frame.f_code
    if code is _RUN_ITEM_CODE:
        return "item"
    if code.co_name == "_run" and frame.f_globals.get("__name__") == "asyncio.events":
        return "task"
    return None


class _ImportFrame(Exception):
    """The call runs under an import: a module body, not a call."""


def _chain(frame: types.FrameType | None) -> tuple[str, ...]:
    """The ``cloudimg`` modules below ``frame`` (it included), nearest first, repeats merged.

    Continues across greenlets, tasks, executor work items and threads as the module
    docstring says. Raises ``_ImportFrame`` when an import runs below.
    """
    modules: list[str] = []

    def add(name: str) -> None:
        if not modules or modules[-1] != name:
            modules.append(name)

    current = greenlet.getcurrent() if greenlet is not None else None
    while True:
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name.startswith(PREFIX):
                add(name)
            elif name == "importlib._bootstrap":
                raise _ImportFrame
            else:
                boundary = _is_boundary(frame)
                if boundary == "task":
                    task = _current_task()
                    tail = _task_chains.get(task, ()) if task is not None else ()
                    for name in tail:
                        add(name)
                    return tuple(modules)
                if boundary == "item":
                    for name in getattr(_origins, "item", (None, ()))[1]:
                        add(name)
                    return tuple(modules)
            frame = frame.f_back
        # The top of a greenlet: go on in the frame that switched to it.
        if current is not None and current.parent is not None:
            current = current.parent
            frame = current.gr_frame
            continue
        origin = _thread_origins.get(threading.current_thread())
        if origin is not None:
            for name in origin[1]:
                add(name)
        return tuple(modules)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _current_walk() -> str | None:
    item = getattr(_origins, "item", None)
    if item is not None:  # an executor work item: the walk that submitted it, if any
        return item[0]  # type: ignore[no-any-return]
    walk = _WALK.get()
    if walk is not None:
        return walk
    origin = _thread_origins.get(threading.current_thread())
    return origin[0] if origin is not None else None


def _profile(frame: types.FrameType, event: str, _arg: object) -> None:
    if event != "call":
        return
    module = frame.f_globals.get("__name__", "")
    if not module.startswith(PREFIX) or frame.f_lasti != _entry_offset(frame.f_code):
        return
    walk_name = _current_walk()
    if walk_name is None:
        return
    try:
        below = _chain(frame.f_back)
    except _ImportFrame:
        return
    walk = _walks[walk_name]
    with _lock:
        walk.calls += 1
        walk.modules.add(module)
        if not below or below[0] == module:
            return
        walk.crossings[(below[0], module)] += 1
        if module in below:
            again = below.index(module)
            pair = (module, below[again - 1])
            walk.back_and_forth[pair] += 1
            walk.chains[pair][tuple(reversed((module, *below[: again + 1])))] += 1


# Executor work items and threads carry the walk and the stack that handed them over:
# concurrent.futures and threading know nothing of contextvars (run_in_executor does not
# copy the context; a Thread starts in an empty one).


def _run_item(
    origin: tuple[str | None, tuple[str, ...]], fn: Callable[..., Any], *args: Any, **kw: Any
) -> Any:
    saved = getattr(_origins, "item", None)
    _origins.item = origin
    try:
        return fn(*args, **kw)
    finally:
        _origins.item = saved


_RUN_ITEM_CODE = _run_item.__code__


def _origin_here() -> tuple[str | None, tuple[str, ...]]:
    walk = _current_walk()
    if walk is None:
        return None, ()
    try:
        return walk, _chain(sys._getframe(2))
    except _ImportFrame:
        return walk, ()


_submit = concurrent.futures.ThreadPoolExecutor.submit
_start = threading.Thread.start


def _traced_submit(
    self: concurrent.futures.ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kw: Any
) -> concurrent.futures.Future[Any]:
    return _submit(self, _run_item, _origin_here(), fn, *args, **kw)


def _traced_start(self: threading.Thread) -> None:
    _thread_origins[self] = _origin_here()
    _start(self)


class _Policy(asyncio.DefaultEventLoopPolicy):
    """Every new loop records, for each task, the stack that created it."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()

        def factory(
            loop: asyncio.AbstractEventLoop,
            coro: Any,
            *,
            context: contextvars.Context | None = None,
        ) -> asyncio.Task[Any]:
            task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
            walk = _current_walk() if context is None else context.get(_WALK)
            if walk is not None:  # only the walks' tasks need their creators' stacks
                with suppress(_ImportFrame):
                    _task_chains[task] = _chain(sys._getframe(1))
            return task

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        return loop


def install() -> None:
    """Profile every thread from now on (call before cloudimg starts any thread)."""
    concurrent.futures.ThreadPoolExecutor.submit = _traced_submit  # type: ignore[method-assign]
    threading.Thread.start = _traced_start  # type: ignore[method-assign]
    asyncio.set_event_loop_policy(_Policy())
    threading.setprofile(_profile)
    sys.setprofile(_profile)


def uninstall() -> None:
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]


@contextmanager
def walking(name: str) -> Iterator[None]:
    token = _WALK.set(name)
    try:
        yield
    finally:
        _WALK.reset(token)


# -- the scenario ------------------------------------------------------------------------


def _disk(path: Path, size: str) -> bytes:
    """A qcow2 of virtual ``size`` made by qemu-img; a raw image of a few MiB without it."""
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True, timeout=60
        )
        return path.read_bytes()
    except FileNotFoundError:
        seed = size.encode()
        data = b"".join(
            hashlib.sha256(seed + bytes([i % 256, i // 256])).digest()
            for i in range(4 * _MIB // 32)
        )
        return b"\0" * 512 + data  # no MBR signature, no magic: a raw disk


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(disk: bytes, config: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.cloudimg.disk.v1",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": _sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.cloudimg.disk.v1+qcow2",
                    "digest": _sha256(disk),
                    "size": len(disk),
                    "annotations": {"org.opencontainers.image.title": "disk.qcow2"},
                }
            ],
        }
    ).encode()


def _expect(response: Any, *statuses: int) -> Any:
    if response.status_code not in statuses:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} "
            f"{response.text[:300]}"
        )
    return response


async def _upload(http: Any, repo: str, image: str, tag: str, disk: bytes) -> None:
    _expect(
        await http.put(
            f"/reg/{repo}/{image}/{tag}",
            content=disk,
            headers={"content-type": "application/octet-stream", "cloudimg-meta": '{"os": "walk"}'},
        ),
        201,
    )


async def _push(http: Any, name: str, tag: str, disk: bytes) -> None:
    started = _expect(await http.post(f"/v2/{name}/blobs/uploads/"), 202)
    patched = _expect(
        await http.patch(
            started.headers["location"],
            content=disk,
            headers={
                "content-range": f"0-{len(disk) - 1}",
                "content-type": "application/octet-stream",
            },
        ),
        202,
    )
    _expect(await http.put(patched.headers["location"], params={"digest": _sha256(disk)}), 201)
    config = b"{}"
    started = _expect(await http.post(f"/v2/{name}/blobs/uploads/"), 202)
    _expect(
        await http.put(
            started.headers["location"],
            params={"digest": _sha256(config)},
            content=config,
            headers={"content-type": "application/octet-stream"},
        ),
        201,
    )
    _expect(
        await http.put(
            f"/v2/{name}/manifests/{tag}",
            content=_manifest(disk, config),
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        ),
        201,
    )


async def _settle(http: Any, name: str, tag: str) -> None:
    """Wait (untraced) until the layer of ``name:tag`` is hashed and the loop is idle."""
    _expect(await http.get(f"/v2/{name}/manifests/{tag}"), 200)
    for _ in range(3):
        await asyncio.sleep(0.05)


def _settings_class(create_app: Callable[..., Any]) -> type:
    """The ``Settings`` class ``create_app`` takes, wherever it lives."""
    import typing

    return typing.get_type_hints(create_app)["settings"]  # type: ignore[no-any-return]


def _cli() -> Any:
    """The click group behind the ``cloudimg`` console script."""
    import importlib
    from importlib.metadata import entry_points

    import click

    (script,) = entry_points(group="console_scripts", name="cloudimg")
    module = importlib.import_module(script.module)
    groups = [v for v in vars(module).values() if isinstance(v, click.Group)]
    if len(groups) != 1:
        raise RuntimeError(f"{script.module}: expected one click group, found {len(groups)}")
    return groups[0]


def _invoke(args: list[str]) -> str:
    from click.testing import CliRunner

    result = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"cloudimg {' '.join(args)}: exit {result.exit_code}\n{result.output}")
    return str(result.output)


async def _serve_and_walk(data_root: Path, disk: bytes, warm: bytes) -> None:
    import httpx

    from cloudimg.api.app import create_app

    settings = _settings_class(create_app)(data_root=data_root)
    app = create_app(settings, None)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://walk") as http:
            # Warm-up: every route of the walks once, on other bytes and names.
            await _upload(http, "warm", "disk", "v0", warm)
            await _settle(http, "warm/disk", "v0")
            await _push(http, "warm/pushed", "v0", warm)
            await _settle(http, "warm/pushed", "v0")
            with walking("upload"):
                await _upload(http, "walk", "disk", "v1", disk)
            await _settle(http, "walk/disk", "v1")
            with walking("push"):
                await _push(http, "walk/pushed", "v1", disk)
            await _settle(http, "walk/pushed", "v1")
            # Something for gc: an abandoned upload session, a deleted tag.
            _expect(await http.post("/v2/walk/abandoned/blobs/uploads/"), 202)
            _expect(await http.delete("/reg/warm/disk/v0"), 200, 204)


def run(work: Path) -> dict[str, dict[str, Any]]:
    """Run the three walks over a data root under ``work``; their figures."""
    data_root = work / "data"
    disk = _disk(work / "disk.qcow2", "64M")
    warm = _disk(work / "warm.qcow2", "32M")
    install()
    try:
        _invoke(["db", "upgrade", "--data-root", str(data_root)])
        asyncio.run(_serve_and_walk(data_root, disk, warm))
        with walking("gc"):
            _invoke(["gc", "--data-root", str(data_root), "--grace", "0", "--json", "--quiet"])
    finally:
        uninstall()
    return {name: _figures(_walks[name]) for name in WALKS}


def _figures(walk: Walk) -> dict[str, Any]:
    examples = [
        {
            "pair": list(pair),
            "calls": count,
            "chain": " -> ".join(
                min(walk.chains[pair].items(), key=lambda item: (-item[1], item[0]))[0]
            ),
        }
        for pair, count in sorted(walk.back_and_forth.items(), key=lambda i: (-i[1], i[0]))
    ]
    return {
        "modules": len(walk.modules),
        "module_names": sorted(walk.modules),
        "crossing_pairs": len(walk.crossings),
        "crossing_calls": sum(walk.crossings.values()),
        "crossings": [
            {"caller": a, "callee": b, "calls": n} for (a, b), n in sorted(walk.crossings.items())
        ],
        "back_and_forth_pairs": len(walk.back_and_forth),
        "back_and_forth_calls": sum(walk.back_and_forth.values()),
        "back_and_forth": examples,
        "calls": walk.calls,
    }


def _short(module: str) -> str:
    return module.removeprefix(PREFIX)


def _print(figures: dict[str, dict[str, Any]], top: int) -> None:
    for name, walk in figures.items():
        print(f"== {name}")
        print(f"  modules entered:     {walk['modules']}")
        print(
            f"  crossings:           {walk['crossing_pairs']} distinct pairs, "
            f"{walk['crossing_calls']} calls"
        )
        print(
            f"  back-and-forth:      {walk['back_and_forth_pairs']} distinct pairs, "
            f"{walk['back_and_forth_calls']} calls"
        )
        for example in walk["back_and_forth"][:top]:
            chain = " -> ".join(_short(m) for m in example["chain"].split(" -> "))
            print(f"    {example['calls']:6d}  {chain}")
        print(f"  modules: {', '.join(_short(m) for m in walk['module_names'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--top", type=int, default=5, help="back-and-forth examples shown")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (its path on stderr)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="call-walks-"))
    try:
        figures = run(work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(figures, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
