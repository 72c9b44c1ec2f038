"""The Spark session of a batch job, configured from the project's settings (`DC_BATCH_*`)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from dc.config import Settings
from dc.errors import DataError

log = logging.getLogger(__name__)

DEBIAN_JDBC_JAR = Path("/usr/share/java/postgresql.jar")


def java_problem() -> str | None:
    """Why Spark cannot start here (no Java runtime), or None."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return None
    return (
        "Spark needs a Java runtime and none is installed: on Debian, "
        "`apt-get install openjdk-17-jre-headless` (make setup does it when it can)"
    )


def with_secret_password(settings: Settings) -> Settings:
    """`settings` with DC_DATABASE_PASSWORD read from DC_DATABASE_SECRET_ARN's JSON `password`
    key when a secret is named and no password is given (EMR Serverless passes the ARN, not
    the password: a copy would go stale at the next rotation). Unchanged otherwise.

    Raises:
        DataError: the secret cannot be read, or holds no `password` key.
    """
    if not settings.database_secret_arn or settings.database_password:
        return settings
    import json

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("secretsmanager", region_name=settings.aws_region)
        value = client.get_secret_value(SecretId=settings.database_secret_arn)["SecretString"]
        password = json.loads(value)["password"]
    except (BotoCoreError, ClientError, KeyError, ValueError, TypeError) as exc:
        raise DataError(
            f"cannot read the database password from the secret DC_DATABASE_SECRET_ARN names "
            f"({type(exc).__name__})"
        ) from exc
    return settings.model_copy(update={"database_password": password})


def jdbc_jar(settings: Settings) -> Path | None:
    """The PostgreSQL JDBC driver jar: DC_BATCH_JDBC_JAR, else Debian's, else None."""
    if settings.batch_jdbc_jar:
        return Path(settings.batch_jdbc_jar)
    return DEBIAN_JDBC_JAR if DEBIAN_JDBC_JAR.is_file() else None


def jdbc_options(settings: Settings, database_url: str | None = None) -> dict[str, str]:
    """Spark JDBC options (url, user, password, driver, fetchsize) for a SQLAlchemy PostgreSQL
    URL (default: the settings' database).

    Raises:
        DataError: the database is not PostgreSQL (Spark reads SQLite poorly; use files).
    """
    url = make_url(database_url or settings.database_url_or_default)
    if not url.drivername.startswith("postgresql"):
        raise DataError(
            f"batch jobs read and write PostgreSQL over JDBC, not {url.drivername}: set "
            "DC_DATABASE_URL, or give the input as Parquet or CSV files"
        )
    options = {
        "url": f"jdbc:postgresql://{url.host or 'localhost'}:{url.port or 5432}/{url.database}",
        "driver": "org.postgresql.Driver",
        "fetchsize": str(settings.batch_jdbc_fetch_size),
    }
    if url.username:
        options["user"] = url.username
    if url.password:
        options["password"] = url.password
    return options


def spark_session(settings: Settings, master: str | None = None, app_name: str = "dc-batch"):
    """A Spark session for a batch job.

    Local masters run the Python workers with this interpreter (the project's venv), without
    the web UI; another master (spark://, yarn) gets DC_BATCH_EXECUTOR_CORES and _MEMORY; under
    spark-submit (EMR) the job's own master, Python (`--archives` venv) and sizes stand. The
    session's time zone is UTC, like every time stamp of the project.

    Raises:
        RuntimeError: no Java runtime (`java_problem` says how to get one).
    """
    problem = java_problem()
    if problem:
        raise RuntimeError(problem)
    from pyspark.sql import SparkSession

    # Under spark-submit (EMR, a cluster) the JVM that started this interpreter has its master,
    # Python and sizes already: the settings' master would override them.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    master = "spark-submit" if submitted else (master or settings.batch_master)
    builder: Any = SparkSession.builder.appName(app_name)
    config = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.batch_arrow_batch_size),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.python.worker.reuse": "true",  # keeps each worker's loaded encoder
    }
    if not submitted:
        builder = builder.master(master)
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        config |= {"spark.ui.enabled": "false", "spark.driver.memory": "2g"}
    elif not submitted:
        config |= {
            "spark.executor.cores": str(settings.batch_executor_cores),
            "spark.executor.memory": settings.batch_executor_memory,
        }
    jar = jdbc_jar(settings)
    if jar is not None:
        config["spark.jars"] = str(jar)
    for key, value in config.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info(
        "spark %s on %s (%d cores)",
        session.version,
        master,
        session.sparkContext.defaultParallelism,
    )
    return session


def partitions_for(session: Any, settings: Settings) -> int:
    """How many partitions to cut an input into: DC_BATCH_PARTITIONS, else 4 per core."""
    return settings.batch_partitions or 4 * session.sparkContext.defaultParallelism
