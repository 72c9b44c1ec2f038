#!/usr/bin/env bash
# The one entry point of the three images (after tini): the command picks the role.
#
#   api [ARGS]       alembic upgrade head, then the prediction API under gunicorn
#   embedder [ARGS]  the embedder service under gunicorn
#   migrate          alembic upgrade head, then exit (the one-off migration task)
#   demo             load data/ and train and promote the demo models when none exist
#   train ARGS       scripts/train.py ARGS (e.g. --all --promote)
#   anything else    run as given (a shell, scripts/replay_spool.py, ...)
#
# ARGS after api/embedder go to gunicorn. Every process that serves is exec'ed, so tini's
# SIGTERM reaches gunicorn itself: the workers answer what they accepted and the API flushes
# its inference log. Settings are DC_* environment variables (README, Settings).
set -euo pipefail
cd /app

say() { printf '[boot] %s\n' "$*" >&2; }

role="${1:-api}"
if [[ $# -gt 0 ]]; then shift; fi

case "$role" in
    api)
        say "api: alembic upgrade head"
        alembic upgrade head
        say "api: starting gunicorn on ${DC_API_HOST:-127.0.0.1}:${DC_API_PORT:-8000}"
        exec gunicorn -c api/gunicorn.conf.py "$@"
        ;;
    embedder)
        say "embedder: starting gunicorn on ${DC_EMBEDDER_HOST:-127.0.0.1}:${DC_EMBEDDER_PORT:-8501}"
        exec gunicorn -c embedder/gunicorn.conf.py "$@"
        ;;
    migrate)
        say "migrate: alembic upgrade head"
        exec alembic upgrade head
        ;;
    demo)
        say "demo: the demo models, trained and promoted when missing"
        exec python scripts/demo.py "$@"
        ;;
    train)
        say "train: scripts/train.py $*"
        exec python scripts/train.py "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
