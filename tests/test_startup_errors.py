"""First-contact mistakes: each is one actionable line on stderr and a non-zero exit.

Never a traceback, never the password of a database URL. Real causes only: a data
root of another uid (the command runs as uid 65534 through ``setpriv``), a path under
``/proc``, a PostgreSQL port nobody listens on, a database that does not exist, and a
private PostgreSQL server that checks passwords (scram-sha-256) for a wrong one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import free_port, start_server
from tests.databases import ADMIN_URL, catalog_database, postgres_unavailable
from tests.object_store import SeaweedFS
from tests.support import refusing_port
from tests.volumes import tmpfs

PASSWORD = "s3cret-Pa55word"
NOBODY = 65534
CREATING = [["serve"], ["db", "upgrade"], ["import-legacy", "--from", "."]]
"""Commands that may create a data root (import-legacy with a --from that exists)."""
MAINTENANCE = [["fsck"], ["du"], ["gc"], ["db", "current"], ["db", "check"]]


def run(
    *args: str, env: dict[str, str] | None = None, uid: int | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m cloudimg ARGS`` with a clean ``CLOUDIMG_*`` environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDIMG_")}
    command = [sys.executable, "-m", "cloudimg", *args]
    if uid is not None:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        cwd=cwd,
        check=False,
    )


def serve_args(*extra: str) -> list[str]:
    return ["serve", "--listener-addr", "127.0.0.1:0", *extra]


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The single line a refused command printed; it names each of ``words``."""
    assert done.returncode != 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- the data root ----------------------------------------------------------------------


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory of root's, mode 0755, on a path every uid may traverse (not tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="cloudimg-root-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def need_root() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running as another uid needs root and setpriv")


@pytest.mark.parametrize("command", [*CREATING, ["gc"], ["fsck"]], ids=" ".join)
def test_data_root_of_another_uid(world_dir: Path, command: list[str]) -> None:
    need_root()
    root = world_dir / "data"
    assert run("db", "upgrade", "--data-root", str(root)).returncode == 0  # root's registry
    before = sorted(p.name for p in root.iterdir())
    args = serve_args() if command == ["serve"] else command
    line = refused(
        run(*args, "--data-root", str(root), uid=NOBODY, cwd=world_dir),
        str(root),
        f"uid {NOBODY}",
        "uid 0",
    )
    assert "permission denied" in line.lower()
    assert sorted(p.name for p in root.iterdir()) == before


def test_new_data_root_in_a_directory_of_another_uid(world_dir: Path) -> None:
    need_root()
    root = world_dir / "data"
    refused(
        run(*serve_args(), "--data-root", str(root), uid=NOBODY), str(root), "Permission denied"
    )
    assert not root.exists()


@pytest.mark.parametrize("exists", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("command", [*CREATING, *MAINTENANCE], ids=" ".join)
def test_data_root_under_a_directory_another_uid_keeps_private(
    world_dir: Path, command: list[str], exists: bool
) -> None:
    """A data root inside another user's 0700 directory: this uid cannot even stat it.

    ``Path.exists`` and ``is_dir`` raise ``PermissionError`` there instead of answering;
    the line names the directory that blocks the way and whose it is.
    """
    need_root()
    private = world_dir / "private"
    root = private / "data"
    private.mkdir(mode=0o700)
    if exists:
        assert run("db", "upgrade", "--data-root", str(root)).returncode == 0  # root's registry
    private.chmod(0o700)
    args = serve_args() if command == ["serve"] else command
    done = run(*args, "--data-root", str(root), uid=NOBODY, cwd=world_dir)
    line = refused(
        done, str(root), "Permission denied", f"{private} belongs to uid 0", f"uid {NOBODY}"
    )
    assert line.startswith("Error: ")
    assert done.returncode == 1  # click's exit for a usage mistake, as every refusal here
    assert sorted(p.name for p in private.iterdir()) == (["data"] if exists else [])


@pytest.mark.parametrize("command", CREATING, ids=" ".join)
def test_data_root_that_cannot_exist(tmp_path: Path, command: list[str]) -> None:
    args = serve_args() if command == ["serve"] else command
    root = "/proc/cloudimg/data"
    refused(run(*args, "--data-root", root, cwd=tmp_path), root, "cannot create")


@pytest.mark.parametrize("command", MAINTENANCE, ids=" ".join)
def test_maintenance_on_a_data_root_that_does_not_exist(tmp_path: Path, command: list[str]) -> None:
    """A typo in a CronJob fails instead of reporting a healthy, empty registry."""
    typo = tmp_path / "dta"
    refused(run(*command, "--data-root", str(typo)), str(typo), "does not exist")
    assert not typo.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", MAINTENANCE, ids=" ".join)
def test_maintenance_on_a_directory_without_a_catalog(tmp_path: Path, command: list[str]) -> None:
    refused(run(*command, "--data-root", str(tmp_path)), "no catalog", "catalog.sqlite3")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
@pytest.mark.parametrize("command", MAINTENANCE, ids=" ".join)
def test_maintenance_on_an_empty_postgres_database(tmp_path: Path, command: list[str]) -> None:
    with catalog_database("postgresql", tmp_path / "data") as url:
        done = run(*command, "--data-root", str(tmp_path / "data"), env=db_env(url))
        refused(done, "empty", "no cloudimg schema")


def test_maintenance_works_once_a_creating_command_ran(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert run("db", "upgrade", "--data-root", str(root)).returncode == 0
    for command in MAINTENANCE:
        done = run(*command, "--data-root", str(root))
        assert done.returncode == 0, (command, done.stderr)
    assert run("db", "current", "--data-root", str(root)).stdout.strip().endswith("(head)")


# -- the catalog database ---------------------------------------------------------------


def db_env(url: str) -> dict[str, str]:
    return {"CLOUDIMG_DATABASE_URL": url}


def postgres_url(**parts: object) -> str:
    """The test server's URL with ``parts`` changed and a password that must never show."""
    base = make_url(ADMIN_URL).set(password=PASSWORD)
    return base.set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


@pytest.fixture
def postgres() -> None:
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)


ALL_COMMANDS = [["serve"], ["db", "upgrade"], ["gc"], ["db", "current"]]
"""Every command goes through the same checks (``cloudimg.cli.storage``): one of each kind."""


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_postgres_down(tmp_path: Path, command: list[str]) -> None:
    args = serve_args() if command == ["serve"] else command
    tmp_path.joinpath("data").mkdir()
    with refusing_port() as port:
        url = postgres_url(host="127.0.0.1", port=port)
        done = run(*args, "--data-root", str(tmp_path / "data"), env=db_env(url))
    refused(done, "connection refused")


@pytest.mark.postgres
@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_postgres_database_missing(postgres: None, tmp_path: Path, command: list[str]) -> None:
    url = postgres_url(database="cloudimg_no_such_database")
    args = serve_args() if command == ["serve"] else command
    tmp_path.joinpath("data").mkdir()
    refused(
        run(*args, "--data-root", str(tmp_path / "data"), env=db_env(url)),
        'no database "cloudimg_no_such_database"',
        "createdb",
    )


@pytest.mark.postgres
def test_postgres_without_a_driver_means_asyncpg(postgres: None, tmp_path: Path) -> None:
    """``postgresql://`` as PostgreSQL's tools and operators' Secrets write it: accepted."""
    root = tmp_path / "data"
    with catalog_database("postgresql", root) as url:
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        assert plain.startswith("postgresql://")
        running = start_server(root, "--database-url", plain)
        try:
            with running.client() as http:
                assert http.get("/readyz").status_code == 200
                assert http.get("/reg").json()["data"] == []
        finally:
            running.stop()
        assert run("db", "current", "--data-root", str(root), env=db_env(plain)).returncode == 0


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1/db", ["postgresql+asyncpg"]),
        (f"sqlite+pysqlite:///{PASSWORD}.db", ["sqlite+aiosqlite"]),
        (f"mysql://u:{PASSWORD}@127.0.0.1/db", ["SQLite or PostgreSQL", "'mysql'"]),
        (f"u:{PASSWORD}@127.0.0.1/db", ["not a URL"]),
    ],
)
def test_database_url_the_catalog_cannot_use(tmp_path: Path, url: str, words: list[str]) -> None:
    for command in (serve_args(), ["gc"]):
        done = run(*command, "--data-root", str(tmp_path), env=db_env(url))
        assert PASSWORD not in done.stderr
        refused(done, "--database-url", *words)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def password_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PostgreSQL server that checks passwords (scram-sha-256); yields its URL.

    The shared test server trusts every local connection, so a wrong password cannot
    fail there. Runs as the ``postgres`` user (the server refuses root).
    """
    initdb = Path("/usr/lib/postgresql/15/bin/initdb")
    pg_ctl = initdb.with_name("pg_ctl")
    if os.geteuid() != 0 or not initdb.exists() or shutil.which("runuser") is None:
        pytest.skip("a private PostgreSQL server needs root, runuser and PostgreSQL 15")
    home = Path(tempfile.mkdtemp(prefix="cloudimg-pg-"))
    shutil.chown(home, "postgres")
    (home / "pw").write_text("right-password\n")
    shutil.chown(home / "pw", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    auth = ["--auth=scram-sha-256", f"--pwfile={home / 'pw'}"]
    subprocess.run(
        [*as_postgres, str(initdb), "-D", str(home / "db"), "-U", "admin", "-N", *auth],
        check=True,
        capture_output=True,
    )
    for attempt in range(5):
        # PostgreSQL must be told its port: one free a moment ago, which another process
        # (a server of another pytest-xdist worker) may bind first; then another port.
        port, log = free_port(), home / f"log-{attempt}"
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run(
            [*as_postgres, str(pg_ctl), "-D", str(home / "db"), "-o", options,
             "-l", str(log), "-w", "start"],
            check=False,
            capture_output=True,
            text=True,
        )  # fmt: skip
        if started.returncode == 0:
            break
        written = log.read_text(errors="replace") if log.exists() else ""
        assert "already in use" in written, started.stdout + started.stderr + written
    else:
        pytest.fail(f"every port picked for the private PostgreSQL was taken:\n{written}")
    try:
        yield f"postgresql+asyncpg://admin:right-password@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, str(pg_ctl), "-D", str(home / "db"), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_postgres_authentication_failed(
    password_postgres: str, tmp_path: Path, command: list[str]
) -> None:
    wrong = make_url(password_postgres).set(password=PASSWORD)
    url = wrong.render_as_string(hide_password=False)
    args = serve_args() if command == ["serve"] else command
    tmp_path.joinpath("data").mkdir()
    refused(
        run(*args, "--data-root", str(tmp_path / "data"), env=db_env(url)),
        'refused user "admin"',
        "password authentication failed",
    )


def test_the_right_password_works(password_postgres: str, tmp_path: Path) -> None:
    """The private server is a working catalog: the refusals above are the password's."""
    done = run("db", "upgrade", "--data-root", str(tmp_path), env=db_env(password_postgres))
    assert done.returncode == 0, done.stderr
    current = run("db", "current", "--data-root", str(tmp_path), env=db_env(password_postgres))
    assert current.stdout.strip().endswith("(head)")


# -- routine noise -------------------------------------------------------------------------


def test_migrations_are_logged_only_when_one_runs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    first = run("db", "upgrade", "--data-root", str(root))
    assert first.returncode == 0, first.stderr
    assert "Running upgrade" in first.stderr
    for command in [["db", "upgrade"], *MAINTENANCE]:
        done = run(*command, "--data-root", str(root))
        assert done.returncode == 0, done.stderr
        assert "alembic" not in done.stderr, (command, done.stderr)
    running = start_server(root)
    running.stop()
    assert "alembic" not in running.log()


@pytest.mark.parametrize("command", [["serve"], ["gc"], ["fsck"]], ids=" ".join)
def test_data_root_on_a_read_only_volume(tmp_path: Path, command: list[str]) -> None:
    with tmpfs(tmp_path / "volume", "4m") as volume:
        root = volume / "data"
        assert run("db", "upgrade", "--data-root", str(root)).returncode == 0
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro", str(volume)], capture_output=True, check=False
        )
        assert remounted.returncode == 0, remounted.stderr
        args = serve_args() if command == ["serve"] else command
        refused(run(*args, "--data-root", str(root)), str(root), "read-only file system")


# -- the blob store's bucket ----------------------------------------------------------------

BUCKET_COMMANDS = [["serve"], ["gc"], ["fsck"], ["du"], ["import-legacy", "--from", "."]]
"""The commands that use the blob store (``db`` is the catalog's alone)."""


def bucket_env(
    store: SeaweedFS, bucket: str, *, endpoint: str = "", secret: str = ""
) -> dict[str, str]:
    return {
        "CLOUDIMG_BLOB_STORE": f"s3://{bucket}/images",
        "CLOUDIMG_S3_ENDPOINT": endpoint or store.endpoint,
        "CLOUDIMG_S3_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": store.access_key,
        "AWS_SECRET_ACCESS_KEY": secret or store.secret_key,
    }


def bucket_refused(
    store: SeaweedFS, tmp_path: Path, command: list[str], env: dict[str, str], *words: str
) -> None:
    """``command`` on a registry whose catalog exists: one line naming ``words``, exit 1,
    never a secret."""
    root = tmp_path / "data"
    assert run("db", "upgrade", "--data-root", str(root), env=env).returncode == 0
    before = sorted(p.name for p in root.iterdir())
    args = serve_args() if command == ["serve"] else command
    done = run(*args, "--data-root", str(root), env=env, cwd=tmp_path)
    assert done.returncode == 1
    line = refused(done, *words)
    assert store.secret_key not in line
    assert env["AWS_SECRET_ACCESS_KEY"] not in line
    assert sorted(p.name for p in root.iterdir()) == before  # no blobs/, staging/ or trash/


@pytest.mark.parametrize("command", BUCKET_COMMANDS, ids=" ".join)
def test_missing_bucket(seaweedfs: SeaweedFS, tmp_path: Path, command: list[str]) -> None:
    env = bucket_env(seaweedfs, "no-such-bucket-here")
    bucket_refused(seaweedfs, tmp_path, command, env, "no-such-bucket-here", seaweedfs.endpoint)


@pytest.mark.parametrize("command", [["serve"], ["gc"]], ids=" ".join)
def test_bucket_credentials_refused(
    seaweedfs: SeaweedFS, tmp_path: Path, command: list[str]
) -> None:
    bucket = seaweedfs.new_bucket()
    env = bucket_env(seaweedfs, bucket, secret=PASSWORD)
    bucket_refused(seaweedfs, tmp_path, command, env, bucket, seaweedfs.endpoint, "credentials")


@pytest.mark.parametrize("command", [["serve"], ["fsck"]], ids=" ".join)
def test_object_store_unreachable(seaweedfs: SeaweedFS, tmp_path: Path, command: list[str]) -> None:
    with refusing_port() as port:
        endpoint = f"http://127.0.0.1:{port}"
        env = bucket_env(seaweedfs, "some-bucket", endpoint=endpoint)
        bucket_refused(seaweedfs, tmp_path, command, env, "some-bucket", endpoint, "unreachable")


@pytest.mark.postgres
def test_a_bucket_and_postgres_need_no_data_root(
    postgres: None, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """Replicas without a shared volume: a data root that does not exist stays so."""
    root = tmp_path / "nowhere"
    with catalog_database("postgresql", tmp_path / "catalog") as url:
        env = {**bucket_env(seaweedfs, seaweedfs.new_bucket()), **db_env(url)}
        assert run("db", "upgrade", "--data-root", str(root), env=env).returncode == 0
        for command in (["gc"], ["fsck"], ["du"]):
            done = run(*command, "--data-root", str(root), env=env)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert not root.exists()
