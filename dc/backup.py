"""S3 backup and restore of trained version folders (`<artifacts_dir>/<region>/<model>/<version>/`).

A version is copied file by file to `s3://<bucket>/<prefix>/<region>/<model>/<version>/<path>`.
The marker `_backup.json` (every file's path, size and SHA-256) is written last, so a backup
without it is incomplete and is never restored; a restore checks every file against it.

Credentials come from boto3's usual chain (environment, shared files, instance or task role);
`DC_S3_ENDPOINT_URL` points the client at MinIO or moto instead of AWS.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from dc.config import Settings
from dc.errors import BackupError
from dc.utilities.files import sha256_file

log = logging.getLogger(__name__)

MARKER = "_backup.json"
MANIFEST_FORMAT = 1
# Files transferred at once. A version is a few dozen files, mostly small, so parallel files
# beat parallel parts; large files (raw data, models) are still split by the TransferConfig.
FILE_WORKERS = 8
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024,
    multipart_chunksize=16 * 1024 * 1024,
    max_concurrency=4,
    use_threads=True,
)
_S3_ERRORS = (BotoCoreError, ClientError, S3UploadFailedError)

T = TypeVar("T")
R = TypeVar("R")

# One boto3 session per process, made on first use: a fresh session re-reads botocore's service
# models (~0.1 s a client), and sessions are not thread-safe, hence the lock around client
# creation. It keeps its credential provider, which refreshes role credentials by itself.
_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def s3_client(settings: Settings):
    """An S3 client for `settings.aws_region`, at `settings.s3_endpoint_url` when set.

    Credentials come from boto3's default chain. With an endpoint override (MinIO, moto) the
    client uses path-style addresses, which such servers need for plain host:port endpoints.
    """
    config = BotoConfig(
        region_name=settings.aws_region,
        retries={"max_attempts": 5, "mode": "standard"},
        # Each file worker may run TRANSFER.max_concurrency part transfers on the shared client.
        max_pool_connections=FILE_WORKERS * TRANSFER.max_request_concurrency,
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
    )
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            "s3",
            region_name=settings.aws_region,
            endpoint_url=settings.s3_endpoint_url or None,
            config=config,
        )


def backup_version(
    version_dir: Path, settings: Settings, *, region: str, model: str, version: str
) -> str:
    """Upload every file of a version folder to S3, then the `_backup.json` marker.

    Files are uploaded in parallel; each object also carries its SHA-256 as metadata. Backing a
    version up again first removes its marker (so it reads as incomplete while files are being
    replaced), and afterwards deletes objects no longer in the folder.

    Args:
        version_dir: the local version folder.
        settings: bucket, key prefix, region and endpoint.
        region, model, version: where the folder goes under the prefix.

    Returns:
        The backup's URI, `s3://<bucket>/<prefix>/<region>/<model>/<version>/`.

    Raises:
        BackupError: no bucket configured, the folder is missing or empty, or S3 failed.
    """
    bucket = _require_bucket(settings)
    prefix = _version_prefix(settings, region, model, version)
    uri = f"s3://{bucket}/{prefix}"
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise BackupError(f"cannot back up {version_dir}: not a folder")
    files, empty_dirs = _scan(version_dir)
    if not files:
        raise BackupError(f"cannot back up {version_dir}: it holds no files")
    if MARKER in files:
        raise BackupError(
            f"cannot back up {version_dir}: it holds a file named {MARKER}, the name reserved "
            "for the backup marker"
        )

    client = s3_client(settings)
    started = time.perf_counter()
    log.info("backing up %s (%d files) to %s", version_dir, len(files), uri)

    def upload(relative: str) -> dict:
        path = version_dir / relative
        try:
            size = path.stat().st_size
            digest = sha256_file(path)
            client.upload_file(
                str(path),
                bucket,
                prefix + relative,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=TRANSFER,
            )
        except (*_S3_ERRORS, OSError) as exc:
            raise BackupError(f"backup to {uri} failed on {relative}: {_describe(exc)}") from exc
        log.debug("uploaded %s (%d bytes)", relative, size)
        return {"path": relative, "size": size, "sha256": digest}

    try:
        client.delete_object(Bucket=bucket, Key=prefix + MARKER)
        entries = _run_parallel(upload, files, desc=f"backup {region}/{model}/{version}")
        manifest = {
            "format": MANIFEST_FORMAT,
            "region": region,
            "model": model,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "total_bytes": sum(entry["size"] for entry in entries),
            "files": entries,
            "empty_dirs": empty_dirs,
        }
        client.put_object(
            Bucket=bucket,
            Key=prefix + MARKER,
            Body=json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"),
            ContentType="application/json",
        )
        stale = _delete_stale(client, bucket, prefix, keep={prefix + f for f in [*files, MARKER]})
    except _S3_ERRORS as exc:
        raise BackupError(f"backup of {version_dir} to {uri} failed: {_describe(exc)}") from exc
    log.info(
        "backed up %s: %d files, %.1f MB in %.1f s%s",
        uri,
        len(entries),
        manifest["total_bytes"] / 1e6,
        time.perf_counter() - started,
        f", {stale} stale objects removed" if stale else "",
    )
    return uri


def restore_version(
    settings: Settings, *, region: str, model: str, version: str, dest: Path
) -> Path:
    """Download a complete backup into `dest/<region>/<model>/<version>/` and verify it.

    Files are written into a hidden sibling folder first, each checked against the size and
    SHA-256 in `_backup.json`, and the folder is renamed into place only when all match, so a
    failed restore leaves nothing behind.

    Args:
        settings: bucket, key prefix, region and endpoint.
        region, model, version: which backup.
        dest: the artifacts root to restore under (typically `settings.artifacts_dir`).

    Returns:
        The restored version folder.

    Raises:
        BackupError: no bucket configured, no backup or an incomplete one (no marker), the
            target folder exists already, a file does not match its checksum, or S3 failed.
    """
    bucket = _require_bucket(settings)
    prefix = _version_prefix(settings, region, model, version)
    uri = f"s3://{bucket}/{prefix}"
    final = Path(dest) / region / model / version
    if final.exists():
        raise BackupError(f"cannot restore {uri}: {final} exists already; move it away first")

    client = s3_client(settings)
    started = time.perf_counter()
    manifest = _read_manifest(client, bucket, prefix)
    if (manifest.get("region"), manifest.get("model"), manifest.get("version")) != (
        region,
        model,
        version,
    ):
        raise BackupError(f"the marker at {uri} describes another version: {manifest!r:.200}")
    entries = manifest.get("files") or []
    for entry in entries:
        _check_relative(entry.get("path", ""), uri)
    empty_dirs = [_check_relative(name, uri) for name in manifest.get("empty_dirs", [])]
    log.info("restoring %s (%d files) to %s", uri, len(entries), final)

    final.parent.mkdir(parents=True, exist_ok=True)
    # A sibling of the target (same file system, so the final rename is atomic), made with
    # mkdir rather than mkdtemp so it gets the usual permissions instead of 0700.
    staging = final.parent / f".{version}.restoring-{uuid.uuid4().hex[:8]}"
    staging.mkdir()

    def download(entry: dict) -> None:
        relative = entry["path"]
        target = staging / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, prefix + relative, str(target), Config=TRANSFER)
            size, digest = target.stat().st_size, sha256_file(target)
        except (*_S3_ERRORS, OSError) as exc:
            raise BackupError(f"restore of {uri} failed on {relative}: {_describe(exc)}") from exc
        if size != entry["size"] or digest != entry["sha256"]:
            raise BackupError(
                f"restore of {uri} failed: {relative} does not match its checksum in {MARKER} "
                f"(expected {entry['size']} bytes, sha256 {entry['sha256']}; got {size} bytes, "
                f"sha256 {digest}); the backup is corrupt"
            )

    try:
        for name in empty_dirs:
            (staging / name).mkdir(parents=True, exist_ok=True)
        _run_parallel(download, entries, desc=f"restore {region}/{model}/{version}")
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "restored %s to %s: %d files verified in %.1f s",
        uri,
        final,
        len(entries),
        time.perf_counter() - started,
    )
    return final


def list_backups(
    settings: Settings, *, region: str | None = None, model: str | None = None
) -> list[dict]:
    """The complete backups in the bucket (those with a marker), optionally of one region/model.

    Returns:
        One dict per backup, sorted by region, model and version: `region`, `model`,
        `version`, `uri`, `created_at` (ISO time the backup completed), `files` (count) and
        `total_bytes`. Incomplete backups (no marker) are not listed.

    Raises:
        BackupError: no bucket configured, or S3 failed.
    """
    bucket = _require_bucket(settings)
    base = _join_key(settings.s3_prefix.strip("/"))
    search = base
    if region is not None:
        search += _join_key(_check_part("region", region))
        if model is not None:
            search += _join_key(_check_part("model", model))
    client = s3_client(settings)
    found: list[dict] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=search):
            for item in page.get("Contents", []):
                parts = item["Key"][len(base) :].split("/")
                if len(parts) != 4 or parts[3] != MARKER:
                    continue
                if (region is not None and parts[0] != region) or (
                    model is not None and parts[1] != model
                ):
                    continue
                manifest = json.loads(
                    client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                )
                found.append(
                    {
                        "region": parts[0],
                        "model": parts[1],
                        "version": parts[2],
                        "uri": f"s3://{bucket}/{base}{'/'.join(parts[:3])}/",
                        "created_at": manifest.get("created_at"),
                        "files": len(manifest.get("files", [])),
                        "total_bytes": manifest.get("total_bytes"),
                    }
                )
    except _S3_ERRORS as exc:
        raise BackupError(
            f"listing backups in s3://{bucket}/{search} failed: {_describe(exc)}"
        ) from exc
    return sorted(found, key=lambda b: (b["region"], b["model"], _natural(b["version"])))


# --- helpers --------------------------------------------------------------------------------


def backup_report(folder: Path, settings: Settings, *, region: str, model: str, window: str) -> str:
    """Upload a report folder (`scripts/report.py`) to
    `s3://<bucket>/<prefix>/<region>/<model>/reports/<window>/`, each object with its SHA-256
    as metadata. A report written again for the same window replaces the objects of the same
    names (reports have no marker: each file is whole, and a reader takes report.json).

    Raises:
        BackupError: no bucket configured, the folder is empty, or S3 failed.
    """
    bucket = _require_bucket(settings)
    prefix = _version_prefix(settings, region, model, "reports") + _join_key(
        _check_part("window", window)
    )
    uri = f"s3://{bucket}/{prefix}"
    files, _ = _scan(Path(folder))
    if not files:
        raise BackupError(f"cannot back up {folder}: it holds no files")
    client = s3_client(settings)

    def upload(relative: str) -> None:
        path = Path(folder) / relative
        try:
            client.upload_file(
                str(path),
                bucket,
                prefix + relative,
                ExtraArgs={"Metadata": {"sha256": sha256_file(path)}},
                Config=TRANSFER,
            )
        except (*_S3_ERRORS, OSError) as exc:
            raise BackupError(f"backup to {uri} failed on {relative}: {_describe(exc)}") from exc

    _run_parallel(upload, files, desc=f"backup {region}/{model} report {window}")
    log.info("backed up the report %s to %s (%d files)", folder, uri, len(files))
    return uri


def _require_bucket(settings: Settings) -> str:
    if not settings.s3_bucket:
        raise BackupError("S3 backups are off: DC_S3_BUCKET is empty; set it to a bucket name")
    return settings.s3_bucket


def _check_part(name: str, value: str) -> str:
    # Each part becomes one key segment and one local folder, so it must be a plain name.
    if not value or "/" in value or "\\" in value or value in {".", ".."}:
        raise BackupError(f"invalid {name} {value!r}: it must be a plain folder name")
    return value


def _join_key(part: str) -> str:
    return f"{part}/" if part else ""


def _version_prefix(settings: Settings, region: str, model: str, version: str) -> str:
    return (
        _join_key(settings.s3_prefix.strip("/"))
        + _join_key(_check_part("region", region))
        + _join_key(_check_part("model", model))
        + _join_key(_check_part("version", version))
    )


def _check_relative(path: str, uri: str) -> str:
    # The marker names the files to write locally: never let it point outside the folder.
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or str(pure) != path:
        raise BackupError(f"the marker at {uri} lists an unsafe path {path!r}; refusing to restore")
    return path


def _scan(version_dir: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of the files, and of the folders that hold nothing at all."""
    files: list[str] = []
    empty_dirs: list[str] = []
    for root, dirs, names in os.walk(version_dir):
        here = Path(root)
        dirs.sort()
        for name in dirs:
            if (here / name).is_symlink():
                log.warning("not backing up %s: a symbolic link to a folder", here / name)
        for name in sorted(names):
            files.append((here / name).relative_to(version_dir).as_posix())
        if here != version_dir and not dirs and not names:
            empty_dirs.append(here.relative_to(version_dir).as_posix())
    return files, empty_dirs


def _run_parallel(fn: Callable[[T], R], items: Sequence[T], *, desc: str) -> list[R]:
    """`fn` over `items` on a small thread pool with a progress bar; the first error cancels
    what has not started and is raised."""
    results: list = [None] * len(items)
    if not items:
        return results
    with (
        ThreadPoolExecutor(max_workers=min(FILE_WORKERS, len(items))) as pool,
        tqdm(total=len(items), desc=desc, unit="file", disable=None) as progress,
    ):
        futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _read_manifest(client, bucket: str, prefix: str) -> dict:
    uri = f"s3://{bucket}/{prefix}"
    try:
        body = client.get_object(Bucket=bucket, Key=prefix + MARKER)["Body"].read()
    except ClientError as exc:
        if _error_code(exc) not in {"NoSuchKey", "404"}:
            raise BackupError(f"cannot read {uri}{MARKER}: {_describe(exc)}") from exc
        try:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except _S3_ERRORS as list_exc:
            raise BackupError(f"cannot list {uri}: {_describe(list_exc)}") from list_exc
        if listing.get("KeyCount", 0):
            raise BackupError(
                f"refusing to restore {uri}: the backup is incomplete ({MARKER} is missing, so "
                "its upload was interrupted or is still running); back the version up again"
            ) from exc
        raise BackupError(f"no backup at {uri}") from exc
    except BotoCoreError as exc:
        raise BackupError(f"cannot read {uri}{MARKER}: {_describe(exc)}") from exc
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise BackupError(f"{uri}{MARKER} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(f"{uri}{MARKER} is not a format-{MANIFEST_FORMAT} backup marker")
    return manifest


def _delete_stale(client, bucket: str, prefix: str, *, keep: set[str]) -> int:
    stale = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["Key"] not in keep
    ]
    for start in range(0, len(stale), 1000):  # DeleteObjects takes at most 1000 keys
        client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": key} for key in stale[start : start + 1000]]},
        )
    return len(stale)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        if code == "NoSuchBucket":
            return f"the bucket does not exist ({exc})"
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return f"access denied: check the AWS credentials and the bucket policy ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
