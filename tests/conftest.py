"""Fixtures chain from the factory: settings -> encoder -> engine -> app -> client.

The encoder is the real exported SavedModel (built by `make setup`), loaded once per session.
Servers are real gunicorn processes on free loopback ports, started by `run_gunicorn`.

Tiers: what a test uses decides its markers (`pytest_collection_modifyitems` below), so they
cannot be forgotten: a fixture that loads TensorFlow or starts a server marks it `slow`, one
that needs PostgreSQL marks it `db`. `make test-fast` runs the rest (`-m "not slow and not db"`)
with `--forbid-tensorflow`, which fails the session if TensorFlow was imported anyway.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from dc.config import Settings
from persistence.db import is_reachable

REPO = Path(__file__).resolve().parent.parent

# Fixtures shared by several test modules but kept in their own files.
pytest_plugins = ["tests.heads_support"]

# Fixtures that load TensorFlow (the encoder; every fixture built on it, such as engine, app,
# tiny_versions, follows: a test's fixturenames hold the whole chain) or start a server.
SLOW_FIXTURES = frozenset({"encoder", "s3_server", "pg_cluster"})
# Fixtures that need a PostgreSQL server.
DB_FIXTURES = frozenset({"pg_url", "pg_migrated", "pg_engine", "pg_cluster"})


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--forbid-tensorflow",
        action="store_true",
        help="fail the session if any test imported TensorFlow (make test-fast sets it)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        used = set(item.fixturenames)
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if used & DB_FIXTURES:
            item.add_marker(pytest.mark.db)


def pytest_sessionfinish(session, exitstatus) -> None:
    if session.config.getoption("--forbid-tensorflow") and "tensorflow" in sys.modules:
        session.config.get_terminal_writer().line(
            "TensorFlow was imported by a test of this session, which --forbid-tensorflow "
            "forbids: mark the test slow (or give it a fixture of SLOW_FIXTURES)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def make_settings(**overrides) -> Settings:
    """Small limits so tests reach them quickly, and no phrase-cache snapshot (an engine
    started from these settings would otherwise read and write var/'s); everything else as
    configured."""
    values = dict(
        cache_size=1000,
        max_batch_size=8,
        max_queue=64,
        max_texts_per_request=32,
        max_text_chars=500,
        log_level="WARNING",
        cache_snapshot="",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def encoder(settings):
    """The service's encoder: DC_EMBEDDER_HANDLE on DC_ENCODER_BACKEND (make_settings)."""
    from dc.nlp.encoder import encoder_from_settings

    return encoder_from_settings(settings)


@pytest.fixture
def engine(encoder, settings):
    from dc.nlp.embeddings import LocalEmbedder

    engine = LocalEmbedder.from_encoder(encoder, settings)
    yield engine
    engine.close()


@pytest.fixture
def app(settings, engine):
    from embedder.app import create_app

    return create_app(settings, engine=engine)


@pytest.fixture
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_gunicorn(
    config: str,
    env: dict[str, str],
    ready_path: str = "/ready",
    timeout_s: float = 180,
    port_env: str = "DC_EMBEDDER_PORT",
):
    """Start gunicorn with `config` and DC_* `env`, wait until `ready_path` answers 200.

    The server binds a free loopback port, given to it in `port_env` (DC_EMBEDDER_PORT for
    the embedder's config, DC_API_PORT for the API's) and the matching *_HOST variable.
    Yields (base_url, process). The server is stopped with SIGTERM (then SIGKILL) on exit.
    """
    port = free_port()
    host_env = port_env.removesuffix("PORT") + "HOST"
    # No phrase-cache snapshot unless the test asks for one: a server would otherwise read the
    # one the last test run left in var/ and write its own there.
    full_env = {
        **os.environ,
        "DC_CACHE_SNAPSHOT": "",
        **env,
        host_env: "127.0.0.1",
        port_env: str(port),
    }
    log_path = REPO / "var" / "test-logs" / f"gunicorn-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", config],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}"
                )
            try:
                if requests.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"gunicorn not ready after {timeout_s} s:\n{log_path.read_text()}"
                )
            time.sleep(0.25)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- PostgreSQL (persistence tests, marked `db`) ------------------------------------------------


def _postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder; installs the server with apt when absent.

    The apt fallback needs root and network (Debian/Ubuntu), as on the CI machine.
    """
    import glob
    import shutil

    def newest() -> Path | None:
        found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
        found.sort(key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
        return Path(found[-1]).parent if found else None

    if newest() is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True)
    folder = newest()
    if folder is None:
        pytest.fail("no PostgreSQL reachable and no initdb under /usr/lib/postgresql/*/bin")
    return folder


class PgCluster:
    """A throwaway PostgreSQL cluster (initdb) on a free loopback port, in a temporary folder.

    `url` reaches its `postgres` database as the `postgres` superuser (trust auth). `stop()` and
    `start()` stop and restart the server on the same port and data folder (database outage
    tests); `remove()` stops it and deletes the folder. A failing initdb or pg_ctl fails the test
    with the server's log.

    PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (which
    the Debian package creates) and the folder is handed over to it.
    """

    def __init__(self) -> None:
        import shutil
        import tempfile

        self._bin = _postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="dc-pg-"))
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres", group="postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args, check: bool = True) -> None:
        try:
            subprocess.run(
                [*self._as_user, self._bin / program, *args],
                check=check,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as error:
            log = self.root / "server.log"
            pytest.fail(
                f"throwaway PostgreSQL failed: {error.cmd}\n{error.stdout}{error.stderr}"
                + (log.read_text() if log.exists() else "")
            )

    def init(self) -> None:
        """Create the cluster (initdb, no fsync: test data only)."""
        initdb = ["-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
        self._pg("initdb", *initdb)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.root / "server.log"
        self._pg("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until it is down (`mode`: smart, fast or immediate)."""
        self._pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        """Stop the server if it runs (errors ignored) and delete the folder."""
        import shutil

        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def _throwaway_cluster():
    """initdb + pg_ctl start on a free loopback port in a temporary folder; removed on exit.

    Yields the URL of the cluster's `postgres` database (see `PgCluster`).
    """
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def pg_url():
    """URL of a fresh, empty PostgreSQL database, dropped at the end of the session.

    The server: DC_TEST_DATABASE_URL, else postgres@127.0.0.1:5432 (trust auth). When that is
    not reachable, a throwaway cluster is started (see `_throwaway_cluster`).
    """
    import secrets
    from contextlib import ExitStack

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = os.environ.get(
        "DC_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    with ExitStack() as stack:
        if not is_reachable(admin):
            admin = stack.enter_context(_throwaway_cluster())
        name = f"dc_test_{os.getpid()}_{secrets.token_hex(4)}"
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        stack.callback(engine.dispose)
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as connection:
                # WITH (FORCE) (PostgreSQL 13+) ends connections a failed test left open.
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_migrated(pg_url):
    """`pg_url` with the schema at Alembic head (upgraded once per session)."""
    from persistence.db import upgrade

    upgrade(pg_url)
    return pg_url


@pytest.fixture
def pg_engine(pg_migrated):
    """An engine on the test database, every table emptied before the test (isolation)."""
    from sqlalchemy import text

    from persistence.db import make_engine, upgrade
    from persistence.models import Base

    # A test may have migrated down and not back up (or failed half-way): put head back.
    upgrade(pg_migrated)
    engine = make_engine(pg_migrated)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield engine
    engine.dispose()


# --- S3 (backup tests): moto in server mode, a real HTTP endpoint on a free loopback port ------


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server for the session; yields its endpoint URL.

    Fake credentials are set for the session (and the machine's AWS profile and config files
    hidden) so no real account can be reached; the environment is restored afterwards.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_settings(s3_server, tmp_path):
    """Settings pointing at a fresh, empty bucket on `s3_server` (one bucket per test)."""
    import uuid

    from dc.backup import s3_client

    settings = make_settings(
        s3_bucket=f"dc-test-{uuid.uuid4().hex[:12]}",
        s3_prefix="dc-artifacts",
        s3_endpoint_url=s3_server,
        aws_region="eu-west-1",
        artifacts_dir=str(tmp_path / "artifacts"),
    )
    s3_client(settings).create_bucket(
        Bucket=settings.s3_bucket,
        CreateBucketConfiguration={"LocationConstraint": settings.aws_region},
    )
    return settings


# --- A PostgreSQL server that tests stop and start (outage tests) ------------------------------


@pytest.fixture
def pg_cluster():
    """A throwaway PostgreSQL cluster of the test's own, started, schema at Alembic head.

    Gives a `PgCluster`: `.url` (postgresql+psycopg2 URL of its `postgres` database), `.stop()`
    and `.start()` (a real outage: connections are refused while it is stopped; the port and
    data stay). About 2 s to create; removed after the test.
    """
    from persistence.db import upgrade

    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        upgrade(cluster.url)
        yield cluster
    finally:
        cluster.remove()
