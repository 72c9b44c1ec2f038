"""The serving runtime: what a serving worker holds between requests and does for each one.

- `loader`: `BackgroundLoader`, something heavy (an encoder) loaded after fork, off-thread.
- `services`: `Services`, everything one prediction worker holds, started and closed together.
- `pipeline`: `predict`, one prediction request end to end without HTTP.
- `store`: `ModelStore`, the promoted heads of one region, in step with the model registry;
  helped by `state` (its immutable snapshot), `sync` (deciding one model's state),
  `version_files` (where a version's files are, restored from S3), `registry_rows` (the
  promoted rows, with their disk copy), `describe` (its JSON-shaped description) and `admin`
  (reload, rollback, promote through the registry).

Transport-free: the services (`api/`, `embedder/`) parse and serialise around it. Nothing is
imported here, so that a process takes only the modules it uses (the embedder service needs
the loader, not the model store).
"""
