"""A promoted version's files on this machine: found by its artifact URI, restored from the S3
backup when they are not here, and loaded as a `Head` that must be the registry row's version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from dc.config import Settings
from dc.errors import BackupError
from dc.predict import Head, load_head


def load_version(settings: Settings, row: dict[str, Any]) -> Head:
    """The head of a registry row's version, restored from S3 first when needed.

    Raises:
        ValueError: the folder holds another model, region or version than the row names, or
            the artifact URI is neither file:// nor s3://.
        FileNotFoundError, BackupError, OSError: the files are not here and cannot be restored.
    """
    folder = version_folder(settings, row)
    head = load_head(folder)
    if (head.name, head.region, head.version) != (row["name"], row["region"], row["version"]):
        raise ValueError(
            f"{folder} holds {head.region}/{head.name} {head.version}, not the registry's "
            f"{row['region']}/{row['name']} {row['version']}"
        )
    return head


def version_folder(settings: Settings, row: dict[str, Any]) -> Path:
    """The local version folder of a registry row, restored from S3 when needed.

    A file:// URI is used when it exists on this machine; otherwise (an s3:// backup, or a
    version trained on another machine) the folder under `artifacts_dir`, which is restored
    from the backup when missing and a bucket is configured.
    """
    uri = row["artifact_uri"]
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(url2pathname(unquote(parsed.path)))
        if path.is_dir():
            return path
    elif parsed.scheme != "s3":
        raise ValueError(f"unsupported artifact URI {uri!r} (file:// or s3:// expected)")
    local = local_version_dir(settings, row["region"], row["name"], row["version"])
    if local.is_dir():
        return local
    if not settings.s3_bucket:
        raise FileNotFoundError(
            f"{local} does not exist and no S3 bucket is configured to restore {uri} from"
        )
    from dc.backup import restore_version  # boto3 only when a restore is needed

    try:
        return restore_version(
            settings,
            region=row["region"],
            model=row["name"],
            version=row["version"],
            dest=Path(settings.artifacts_dir),
        )
    except BackupError:
        if local.is_dir():  # another worker restored it meanwhile
            return local
        raise


def local_version_dir(settings: Settings, region: str, name: str, version: str) -> Path:
    """The version folder under `artifacts_dir`, as `dc.artifacts.version_dir` lays it out.

    Not imported from `dc.artifacts`, which imports scikit-learn (about 110 MB and 1.5 s per
    API worker); a test keeps the two equal.
    """
    return Path(settings.artifacts_dir) / region / name / version
