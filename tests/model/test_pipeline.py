"""The retraining pipeline end to end: PostgreSQL rows -> trained version -> registry -> S3.

Real parts throughout: the training rows in PostgreSQL, the real encoder, moto's S3 server.
The data is small (6 BANKING77 intents) so that a run takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dc.backup import restore_version
from dc.data import load_csv
from dc.errors import InvalidInput, PromotionRefused
from dc.model_config import load_config
from dc.pipeline import require_training_rows, train_model
from persistence.db import session_factory
from persistence.registry import list_versions, promoted_version
from tests.conftest import REPO
from tests.heads_support import write_subset

pytestmark = [pytest.mark.db, pytest.mark.slow]


def write_config(path: Path, name: str, *, epochs: int = 30, learning_rate: float = 3e-3) -> Path:
    path.write_text(
        f"""
[model]
name = "{name}"
region = "test"

[data]
source = "tiny_banking"
history_days = 30
min_examples_per_class = 5

[head]
hidden_layers = 1
units = 64
dropout = 0.1
learning_rate = {learning_rate}

[training]
epochs = {epochs}
batch_size = 32
early_stopping_patience = 5
seed = 7
"""
    )
    return path


@pytest.fixture
def tiny_rows(pg_engine, tmp_path):
    data = REPO / "data" / "banking77"
    train = write_subset(data / "train.csv", tmp_path / "train.csv", per_class=25)
    test = write_subset(data / "test.csv", tmp_path / "test.csv", per_class=10)
    load_csv(pg_engine, train, model="tiny_banking", region="test")
    load_csv(pg_engine, test, model="tiny_banking", region="test", split="test")
    return pg_engine


def test_train_record_backup_and_promote(tiny_rows, s3_settings, engine, tmp_path):
    config = load_config(write_config(tmp_path / "tiny.toml", "tiny"))
    first = train_model(config, s3_settings, embedder=engine, engine=tiny_rows, promote=True)

    assert first.promoted and first.metrics["accuracy"] > 0.6
    assert first.artifact_uri == (
        f"s3://{s3_settings.s3_bucket}/dc-artifacts/test/tiny/{first.version}/"
    )
    with session_factory(tiny_rows)() as session:
        promoted = promoted_version(session, "tiny", "test")
        assert promoted.version == first.version
        assert promoted.embedder_fingerprint == engine.fingerprint
        assert promoted.metrics["weighted_f1"] == first.metrics["weighted_f1"]
        assert promoted.config["head"]["units"] == 64

    # The backup restores to the same files.
    restored = restore_version(
        s3_settings, region="test", model="tiny", version=first.version, dest=tmp_path / "r"
    )
    local = json.loads((first.version_dir / "manifest.json").read_text())
    assert json.loads((restored / "manifest.json").read_text()) == local
    assert local["embedder"]["fingerprint"] == engine.fingerprint

    # Same config and seed: same metrics, so promotion within the tolerance is allowed.
    second = train_model(config, s3_settings, embedder=engine, engine=tiny_rows, promote=True)
    assert second.version != first.version and second.promoted
    assert abs(second.metrics["weighted_f1"] - first.metrics["weighted_f1"]) <= 0.003

    # A much worse head is recorded, but its promotion is refused unless forced.
    weak_config = load_config(
        write_config(tmp_path / "weak.toml", "tiny", epochs=1, learning_rate=1e-5)
    )
    with pytest.raises(PromotionRefused, match="weighted F1"):
        train_model(weak_config, s3_settings, embedder=engine, engine=tiny_rows, promote=True)
    with session_factory(tiny_rows)() as session:
        versions = {v.version: v.status for v in list_versions(session, "tiny", "test")}
        assert promoted_version(session, "tiny", "test").version == second.version
    assert sorted(versions.values()) == ["archived", "promoted", "trained"]

    forced = train_model(
        weak_config, s3_settings, embedder=engine, engine=tiny_rows, promote=True, force=True
    )
    with session_factory(tiny_rows)() as session:
        assert promoted_version(session, "tiny", "test").version == forced.version

    # Without promote=True a version is only recorded (the promoted one stays).
    recorded = train_model(weak_config, s3_settings, embedder=engine, engine=tiny_rows)
    assert not recorded.promoted
    with session_factory(tiny_rows)() as session:
        assert promoted_version(session, "tiny", "test").version == forced.version
        statuses = {v.version: v.status for v in list_versions(session, "tiny", "test")}
    assert statuses[recorded.version] == "trained"


def test_no_rows_in_the_window_is_a_clear_error(pg_engine, settings, engine, tmp_path):
    config = load_config(write_config(tmp_path / "empty.toml", "empty"))
    with pytest.raises(InvalidInput, match="no training rows for model 'tiny_banking'"):
        train_model(config, settings, embedder=engine, engine=pg_engine)


def test_train_cli_explains_itself():
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    for option in ("--config", "--all", "--promote", "--force", "--if-missing", "examples:"):
        assert option in result.stdout


def test_rows_in_another_region_are_named_before_the_encoder_loads(tiny_rows, tmp_path):
    """The new user's trap: rows loaded in one region, a config of another. scripts/train.py
    says where the rows are, and says it before it loads any encoder."""
    config = write_config(tmp_path / "elsewhere.toml", "elsewhere")
    config.write_text(config.read_text().replace('region = "test"', 'region = "global"'))
    with pytest.raises(InvalidInput) as raised:
        require_training_rows(load_config(config), tiny_rows)
    message = raised.value.message
    assert "in region 'global'" in message and "'test' (" in message
    assert "--region global" in message

    url = tiny_rows.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", str(config), "--database-url", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "DC_LOG_LEVEL": "INFO", "DC_S3_BUCKET": ""},
        timeout=120,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "region 'test' (" in output
    assert "loaded embedder" not in output and "tensorflow" not in output.lower()
