"""Batch embedding and scoring on Apache Spark: the work that outgrows one machine.

Three jobs (`dc.batch.jobs`, run by `scripts/batch.py`):

- `score`: phrases (a SQL query over JDBC, or Parquet/CSV files) -> the embedder -> one or more
  heads -> Parquet and/or a PostgreSQL table, a row per (input key, model);
- `embed`: phrases -> vectors, Parquet keyed on (embedder fingerprint, text): the embedding
  cache that training reads (`dc.batch.vectors`, DC_EMBEDDING_CACHE_DIR) instead of
  re-embedding;
- `replay`: a window of the inference log re-scored by a candidate version: its agreement with
  what was served, and accuracy and weighted F1 where feedback exists, as a report in the
  version's folder.

The encoder and the heads load once per Python worker (`dc.batch.workers`: a module-level
cache in the worker process, which Spark reuses across tasks), never per row; phrases pass the
API's rules (`dc.nlp.validation.check_phrase`) and the same in-graph tokeniser, and a head
trained on another embedder is refused as serving refuses it. A row that breaks a rule is
reported and left out, never fails the job.

Needs the `batch` dependency group (pyspark, pyarrow) and a Java runtime (set-up installs
Debian's openjdk-17-jre-headless and libpostgresql-jdbc-java when they are missing).
"""
