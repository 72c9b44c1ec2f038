#!/usr/bin/env bash
# Start the stack in the foreground (what `make run` ends with):
#   1. `alembic upgrade head` on DC_DATABASE_URL (empty: the SQLite file var/dc.sqlite);
#   2. in remote mode (the default here), the central embedder service under gunicorn, waited
#      for until /ready answers;
#   3. the prediction API under gunicorn (api/gunicorn.conf.py) on DC_API_HOST:DC_API_PORT.
# Ctrl-C or SIGTERM stops both gracefully: the API's workers flush their inference logs first.
#
# DC_EMBEDDER_MODE=local skips the embedder service: each API worker then loads the encoder
# itself (simpler, but ~0.8 GB per worker). Every DC_* setting is in the README's table.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN=.venv/bin

export DC_EMBEDDER_MODE="${DC_EMBEDDER_MODE:-remote}"
EMBEDDER_HOST="${DC_EMBEDDER_HOST:-127.0.0.1}"
EMBEDDER_PORT="${DC_EMBEDDER_PORT:-8501}"
export DC_EMBEDDER_URL="${DC_EMBEDDER_URL:-http://${EMBEDDER_HOST}:${EMBEDDER_PORT}}"

echo "[serve] alembic upgrade head"
"$VENV_BIN/alembic" upgrade head

pids=()
stop() {
    trap - INT TERM EXIT
    echo "[serve] stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap stop INT TERM EXIT

if [[ "$DC_EMBEDDER_MODE" == "remote" ]]; then
    echo "[serve] starting the embedder service on ${EMBEDDER_HOST}:${EMBEDDER_PORT}"
    "$VENV_BIN/gunicorn" -c embedder/gunicorn.conf.py &
    pids+=($!)
    for _ in $(seq 1 240); do
        if "$VENV_BIN/python" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)" \
            "${DC_EMBEDDER_URL}/ready" 2>/dev/null; then
            break
        fi
        kill -0 "${pids[0]}" 2>/dev/null || { echo "[serve] the embedder service exited" >&2; exit 1; }
        sleep 0.5
    done
fi

echo "[serve] starting the prediction API on ${DC_API_HOST:-127.0.0.1}:${DC_API_PORT:-8000}"
"$VENV_BIN/gunicorn" -c api/gunicorn.conf.py &
pids+=($!)
# Whichever exits first ends the stack (the trap stops the other).
wait -n
