"""S3 backup and restore of version folders, against moto running as a real HTTP S3 server."""

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from boto3.s3.transfer import TransferConfig

from dc import backup
from dc.backup import MARKER, backup_version, list_backups, restore_version, s3_client
from dc.errors import BackupError
from tests.conftest import make_settings

REGION, MODEL, VERSION = "eu", "intents", "20240301T101500Z"


def make_version_folder(root: Path, *, seed: int = 0) -> Path:
    """A folder shaped like a trained version: nested dirs, binary, empty and unicode files."""
    rng = np.random.default_rng(seed)
    folder = root / REGION / MODEL / VERSION
    (folder / "raw").mkdir(parents=True)
    (folder / "processed").mkdir()
    reports = folder / "models" / "mlp" / "reports"
    reports.mkdir(parents=True)
    (folder / "models" / "mlp" / "checkpoints").mkdir()  # stays empty

    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("dc/train.py", "print('train')\n")
    (folder / "code.zip").write_bytes(code.getvalue())
    (folder / "raw" / "rows.csv").write_text("text,label\nhello,greet\n", encoding="utf-8")
    (folder / "raw" / "données_été ✓.csv").write_text("text,label\nbonjour,greet\n", "utf-8")
    (folder / "processed" / "train.npy").write_bytes(rng.bytes(50_000))
    (folder / "models" / "mlp" / "model.keras").write_bytes(rng.bytes(200_000))
    (folder / "models" / "mlp" / "encoders.pkl").write_bytes(pickle.dumps({"labels": ["a", "b"]}))
    (reports / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(3_000))
    (reports / "empty.txt").write_bytes(b"")
    (folder / "manifest.json").write_text(json.dumps({"version": VERSION}), encoding="utf-8")
    return folder


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None), by relative path."""
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
    }


def keys(settings) -> list[str]:
    response = s3_client(settings).list_objects_v2(Bucket=settings.s3_bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


def test_round_trip_restores_identical_bytes(s3_settings, tmp_path, monkeypatch):
    # A low multipart threshold sends the 6 MB file through the multipart path too.
    small_parts = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    monkeypatch.setattr(backup, "TRANSFER", small_parts)
    folder = make_version_folder(tmp_path / "source")
    (folder / "raw" / "big.bin").write_bytes(np.random.default_rng(1).bytes(6 * 2**20))

    uri = backup_version(folder, s3_settings, region=REGION, model=MODEL, version=VERSION)

    prefix = f"dc-artifacts/{REGION}/{MODEL}/{VERSION}/"
    assert uri == f"s3://{s3_settings.s3_bucket}/{prefix}"
    stored = keys(s3_settings)
    assert f"{prefix}raw/données_été ✓.csv" in stored
    assert f"{prefix}models/mlp/reports/empty.txt" in stored
    assert f"{prefix}{MARKER}" in stored
    marker = json.loads(
        s3_client(s3_settings)
        .get_object(Bucket=s3_settings.s3_bucket, Key=prefix + MARKER)["Body"]
        .read()
    )
    assert marker["empty_dirs"] == ["models/mlp/checkpoints"]
    assert {entry["path"] for entry in marker["files"]} == {
        name for name, data in tree(folder).items() if data is not None
    }

    restored = restore_version(
        s3_settings, region=REGION, model=MODEL, version=VERSION, dest=tmp_path / "restored"
    )

    assert restored == tmp_path / "restored" / REGION / MODEL / VERSION
    assert tree(restored) == tree(folder)
    assert not (restored / MARKER).exists()
    assert [p.name for p in restored.parent.iterdir()] == [VERSION]  # no staging folder left


def test_restore_fails_clearly_on_a_corrupt_object(s3_settings, tmp_path):
    folder = make_version_folder(tmp_path / "source")
    backup_version(folder, s3_settings, region=REGION, model=MODEL, version=VERSION)
    key = f"dc-artifacts/{REGION}/{MODEL}/{VERSION}/models/mlp/model.keras"
    s3_client(s3_settings).put_object(Bucket=s3_settings.s3_bucket, Key=key, Body=b"tampered")

    dest = tmp_path / "restored"
    with pytest.raises(BackupError, match=r"models/mlp/model\.keras does not match its checksum"):
        restore_version(s3_settings, region=REGION, model=MODEL, version=VERSION, dest=dest)
    assert list((dest / REGION / MODEL).iterdir()) == []  # nothing half-restored


def test_restore_refuses_an_incomplete_backup(s3_settings, tmp_path):
    folder = make_version_folder(tmp_path / "source")
    backup_version(folder, s3_settings, region=REGION, model=MODEL, version=VERSION)
    marker = f"dc-artifacts/{REGION}/{MODEL}/{VERSION}/{MARKER}"
    s3_client(s3_settings).delete_object(Bucket=s3_settings.s3_bucket, Key=marker)

    dest = tmp_path / "restored"
    with pytest.raises(BackupError, match="incomplete"):
        restore_version(s3_settings, region=REGION, model=MODEL, version=VERSION, dest=dest)
    assert not (dest / REGION / MODEL / VERSION).exists()
    with pytest.raises(BackupError, match="no backup at"):
        restore_version(s3_settings, region=REGION, model=MODEL, version="other", dest=dest)


def test_restore_refuses_to_overwrite_an_existing_folder(s3_settings, tmp_path):
    folder = make_version_folder(tmp_path / "source")
    backup_version(folder, s3_settings, region=REGION, model=MODEL, version=VERSION)
    with pytest.raises(BackupError, match="exists already"):
        restore_version(
            s3_settings, region=REGION, model=MODEL, version=VERSION, dest=tmp_path / "source"
        )


def test_backing_up_again_replaces_the_copy_and_drops_stale_files(s3_settings, tmp_path):
    folder = make_version_folder(tmp_path / "source")
    backup_version(folder, s3_settings, region=REGION, model=MODEL, version=VERSION)
    (folder / "raw" / "rows.csv").unlink()
    (folder / "manifest.json").write_text('{"version": "changed"}', encoding="utf-8")

    backup_version(folder, s3_settings, region=REGION, model=MODEL, version=VERSION)

    assert not any(key.endswith("raw/rows.csv") for key in keys(s3_settings))
    restored = restore_version(
        s3_settings, region=REGION, model=MODEL, version=VERSION, dest=tmp_path / "restored"
    )
    assert tree(restored) == tree(folder)


def test_list_backups_lists_complete_backups_only(s3_settings, tmp_path):
    folder = tmp_path / "source"
    (folder / "models").mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "models" / "model.keras").write_bytes(b"\x00\x01" * 100)
    for region, model, version in [
        ("us", "intents", "v2"),
        ("eu", "intents", "v10"),
        ("eu", "intents", "v2"),
        ("eu", "faq", "v1"),
        ("eu", "faq", "v9"),
    ]:
        backup_version(folder, s3_settings, region=region, model=model, version=version)
    incomplete = f"dc-artifacts/eu/faq/v9/{MARKER}"
    s3_client(s3_settings).delete_object(Bucket=s3_settings.s3_bucket, Key=incomplete)

    everything = list_backups(s3_settings)
    assert [(b["region"], b["model"], b["version"]) for b in everything] == [
        ("eu", "faq", "v1"),
        ("eu", "intents", "v2"),
        ("eu", "intents", "v10"),  # natural order, not v10 < v2
        ("us", "intents", "v2"),
    ]
    first = everything[0]
    assert first["uri"] == f"s3://{s3_settings.s3_bucket}/dc-artifacts/eu/faq/v1/"
    assert (first["files"], first["total_bytes"]) == (2, 202)
    assert first["created_at"]

    assert [b["version"] for b in list_backups(s3_settings, region="eu", model="intents")] == [
        "v2",
        "v10",
    ]
    assert {b["region"] for b in list_backups(s3_settings, region="us")} == {"us"}
    assert [b["region"] for b in list_backups(s3_settings, model="intents")] == ["eu", "eu", "us"]
    assert list_backups(s3_settings, region="ap") == []


def test_backup_to_a_missing_bucket_fails_clearly(s3_settings, tmp_path):
    folder = make_version_folder(tmp_path / "source")
    missing = s3_settings.model_copy(update={"s3_bucket": s3_settings.s3_bucket + "-missing"})
    with pytest.raises(BackupError, match="bucket does not exist"):
        backup_version(folder, missing, region=REGION, model=MODEL, version=VERSION)


@pytest.mark.parametrize("action", ["backup", "restore", "list"])
def test_an_empty_bucket_setting_is_a_clear_error(action, tmp_path):
    settings = make_settings(s3_bucket="")
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / "file.txt").write_text("x")
    calls = {
        "backup": lambda: backup_version(
            folder, settings, region=REGION, model=MODEL, version=VERSION
        ),
        "restore": lambda: restore_version(
            settings, region=REGION, model=MODEL, version=VERSION, dest=tmp_path / "out"
        ),
        "list": lambda: list_backups(settings),
    }
    with pytest.raises(BackupError, match="DC_S3_BUCKET is empty") as caught:
        calls[action]()
    assert caught.value.code == "backup_error"


@pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
def test_names_must_be_plain_folder_names(bad, tmp_path):
    settings = make_settings(s3_bucket="bucket")
    with pytest.raises(BackupError, match="plain folder name"):
        backup_version(tmp_path, settings, region=REGION, model=bad, version=VERSION)
