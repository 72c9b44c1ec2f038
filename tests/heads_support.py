"""Trained tiny heads (and a database cutter) for tests that load or serve models.

Two real versions of one tiny model, trained once per session through the real pipeline on the
real encoder, so serving and API tests have real artifacts to load. Use them in a test module:

    from tests import heads_support
    from tests.heads_support import copy_with_fingerprint, register_versions

    tiny_versions = heads_support.tiny_versions  # the session fixture

    def test_something(tiny_versions, pg_engine):
        first, second = tiny_versions
        register_versions(pg_engine, tiny_versions, promoted=first.version)

(`from tests.heads_support import tiny_versions  # noqa: F401` works for pytest too, but ruff
then reports F811 on every test taking `tiny_versions` as an argument; the assignment does not.)

The model: "tiny_banking" in region "test" (`TINY_NAME`, `TINY_REGION`), six BANKING77 intents
(`INTENTS`), about a second of training each:

- `tiny_versions[0]`: the good one (30 epochs; test accuracy about 0.9), no `[serving]` rule.
- `tiny_versions[1]`: another seed, stopped after 3 epochs, so it scores clearly worse (the
  promotion rule refuses it over the first unless forced) and answers differently; its
  `[serving]` rule sends predictions below probability 0.5 to the label "other" (not a class).

Both live in a session temporary artifacts folder (`TinyVersion.artifacts_dir`; their
`artifact_uri` is file://). The training rows and the pipeline's own registry rows are in a
SQLite file of their own; the tests' databases get the versions with `register_versions`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from dc.data import write_subset as write_labels
from tests.conftest import REPO

TINY_NAME = "tiny_banking"
TINY_REGION = "test"
INTENTS = ("card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked",
           "cash_withdrawal_charge")  # fmt: skip


@dataclass(frozen=True)
class TinyVersion:
    """One trained version, as the registry and the store see it.

    Attributes:
        name, region, version: its registry key.
        version_dir: the version folder (manifest.json, models/<architecture>/model.keras...).
        artifact_uri: the file:// URI of `version_dir` (what `register_versions` records).
        metrics: test-set metrics (accuracy, weighted_f1, macro_f1, n), as the pipeline records.
        embedder_fingerprint: the embedder it was trained on (the real encoder's, or another
            for copies made by `copy_with_fingerprint`).
        config: the model config as a dict (`ModelConfig.as_dict()`).
    """

    name: str
    region: str
    version: str
    version_dir: Path
    artifact_uri: str
    metrics: dict[str, Any] = field(repr=False)
    embedder_fingerprint: str
    config: dict[str, Any] = field(repr=False)

    @property
    def artifacts_dir(self) -> Path:
        """The artifacts root holding it (`<root>/<region>/<name>/<version>`)."""
        return self.version_dir.parents[2]

    @property
    def manifest(self) -> dict[str, Any]:
        """Its manifest.json."""
        return json.loads((self.version_dir / "manifest.json").read_text(encoding="utf-8"))


def tiny_config(
    *, seed: int, epochs: int, serving: dict | None = None, ensemble: int = 1
) -> dict[str, Any]:
    """The tiny model's training config (a dict for `ModelConfig.model_validate`): a single
    head fitted once, uncalibrated, unless `ensemble` asks for members (then refitted and
    calibrated, as the template's defaults do)."""
    config: dict[str, Any] = {
        "model": {"name": TINY_NAME, "region": TINY_REGION},
        "data": {"history_days": 30, "min_examples_per_class": 5},
        "head": {"hidden_layers": 1, "units": 64, "dropout": 0.1, "learning_rate": 3e-3},
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "early_stopping_patience": 5,
            "seed": seed,
            "ensemble": ensemble,
            "refit": ensemble > 1,
            "calibrate": ensemble > 1,
        },
    }
    if serving is not None:
        config["serving"] = serving
    return config


def write_subset(source: Path, dest: Path, per_class: int, intents: Sequence[str] = INTENTS):
    """The first `per_class` rows of each of `intents` from a BANKING77 CSV file."""
    return write_labels(source, dest, intents, per_class)


@pytest.fixture(scope="session")
def tiny_versions(tmp_path_factory, settings, encoder) -> tuple[TinyVersion, TinyVersion]:
    """Two trained versions of "tiny_banking" (see the module docstring), made once per session."""
    from dc.data import load_csv
    from dc.model_config import ModelConfig
    from dc.nlp.embeddings import LocalEmbedder
    from dc.pipeline import train_model
    from persistence.db import make_engine, upgrade

    root = tmp_path_factory.mktemp("tiny_versions")
    url = f"sqlite:///{root / 'training.sqlite'}"
    run_settings = settings.model_copy(
        update={"artifacts_dir": str(root / "artifacts"), "database_url": url, "s3_bucket": ""}
    )
    upgrade(url)
    engine = make_engine(url)
    data = REPO / "data" / "banking77"
    train = write_subset(data / "train.csv", root / "train.csv", per_class=25)
    test = write_subset(data / "test.csv", root / "test.csv", per_class=10)
    load_csv(engine, train, model=TINY_NAME, region=TINY_REGION)
    load_csv(engine, test, model=TINY_NAME, region=TINY_REGION, split="test")

    configs = [
        tiny_config(seed=7, epochs=30, ensemble=3),
        tiny_config(seed=11, epochs=3, serving={"fallback_label": "other", "min_probability": 0.5}),
    ]
    embedder = LocalEmbedder.from_encoder(encoder, settings)
    versions = []
    try:
        for raw in configs:
            config = ModelConfig.model_validate(raw)
            # force=True: dc.pipeline.train_model currently promotes every version whatever
            # `promote` says (its local import of registry.promote shadows the argument), and
            # the weaker second version would be refused in this private registry.
            result = train_model(
                config, run_settings, embedder=embedder, engine=engine, backup=False, force=True
            )
            versions.append(
                TinyVersion(
                    name=result.name,
                    region=result.region,
                    version=result.version,
                    version_dir=result.version_dir,
                    artifact_uri=result.artifact_uri,
                    metrics=result.metrics,
                    embedder_fingerprint=embedder.fingerprint,
                    config=config.as_dict(),
                )
            )
    finally:
        embedder.close()
        engine.dispose()
    return versions[0], versions[1]


def register_versions(
    engine: Engine, versions: Iterable[TinyVersion], promoted: str | None = None
) -> list:
    """Record `versions` in the registry of `engine`'s database; promote one of them.

    Args:
        engine: any migrated database (e.g. the per-test PostgreSQL `pg_engine`).
        versions: the versions to record (status "trained"), each under its own name/region.
        promoted: the version string to promote (forced, whatever its metrics), or None.

    Returns:
        The recorded `ModelVersion` rows, in order (the promoted one as recorded, before it was
        promoted).
    """
    from dc.promotion import promote
    from persistence.db import session_factory
    from persistence.registry import record_version

    versions = list(versions)
    sessions = session_factory(engine)
    rows = []
    for version in versions:
        with sessions() as session:
            rows.append(
                record_version(
                    session,
                    name=version.name,
                    region=version.region,
                    version=version.version,
                    metrics=version.metrics,
                    embedder_fingerprint=version.embedder_fingerprint,
                    artifact_uri=version.artifact_uri,
                    config=version.config,
                )
            )
    if promoted is not None:
        chosen = next((v for v in versions if v.version == promoted), None)
        if chosen is None:
            raise ValueError(f"{promoted!r} is not one of the versions given")
        with sessions() as session:
            promote(session, chosen.name, chosen.region, promoted, tolerance=0.0, force=True)
    return rows


def copy_version(
    version: TinyVersion,
    dest_root: Path,
    new_version: str,
    *,
    manifest_changes: dict[str, Any] | None = None,
) -> TinyVersion:
    """Copy a version folder to `<dest_root>/<region>/<name>/<new_version>` under a new name.

    The copy's manifest gets `new_version` and then `manifest_changes` (top-level keys merged
    one level deep, e.g. `{"embedder": {"fingerprint": "..."}}`).

    Returns:
        The copy, with its own file:// `artifact_uri`.
    """
    target = Path(dest_root) / version.region / version.name / new_version
    shutil.copytree(version.version_dir, target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["version"] = new_version
    for key, value in (manifest_changes or {}).items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    fingerprint = manifest["embedder"]["fingerprint"]
    return replace(
        version,
        version=new_version,
        version_dir=target,
        artifact_uri=target.resolve().as_uri(),
        embedder_fingerprint=fingerprint,
    )


def copy_with_fingerprint(
    version: TinyVersion, fingerprint: str, dest_root: Path, *, suffix: str = "-foreign"
) -> TinyVersion:
    """A copy of `version` that claims to be trained on another embedder (`fingerprint`).

    The copy goes to `<dest_root>/<region>/<name>/<version><suffix>`. Both its manifest and the
    returned object carry the new fingerprint, so registering it records the same. For refusal
    tests: register it as promoted and the store must refuse it.
    """
    return copy_version(
        version,
        dest_root,
        version.version + suffix,
        manifest_changes={"embedder": {"fingerprint": fingerprint}},
    )


class TcpProxy:
    """A loopback TCP forwarder to a real server, which a test can cut and restore.

    Point a client (e.g. a SQLAlchemy URL) at `port`; `stop()` closes the listener and every
    open connection, so the client sees a real outage (connection reset, then refused);
    `start()` listens again on the same port. For database-outage tests without mocks.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        """Listen on `port` and forward every connection upstream."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every forwarded connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
