# Run `make help` for the list of targets. Every target sets up what it needs first.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help setup browser batch export demo train run run-api run-embedder replay-spool maintain-partitions loadtest notebooks test test-fast deploy-lint terraform-moto image-test bench bench-smoke lint format golden clean

help: ## List the targets with one line each
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## Create .venv, install everything, export the encoder (idempotent)
	@bash scripts/setup.sh

export: setup ## Re-export the encoder SavedModel even if present
	$(PY) scripts/export_embedder.py --force

demo: setup ## Load the bundled datasets and train the demo models when they are missing
	$(PY) scripts/demo.py

train: setup ## Retrain every configured model from the database and promote the good ones
	$(PY) scripts/train.py --all --promote

run: setup demo ## Set up, make sure the demo models exist, then serve embedder + API (foreground)
	bash scripts/serve.sh

run-api: ## Serve only the prediction API under gunicorn on DC_API_HOST:DC_API_PORT
	$(VENV)/bin/alembic upgrade head
	$(VENV)/bin/gunicorn -c api/gunicorn.conf.py

replay-spool: ## Write spooled inference-log rows to the database now
	$(PY) scripts/replay_spool.py

batch: setup ## Spark batch jobs: make batch ARGS="score --input phrases.parquet --model banking77 --output var/batch/scores" (scripts/batch.py --help)
	$(PY) scripts/batch.py $(ARGS)

maintain-partitions: ## Make the inference log's coming daily partitions, drop the expired (PostgreSQL)
	$(PY) scripts/maintain_partitions.py

run-embedder: ## Serve the embedder under gunicorn on DC_EMBEDDER_HOST:DC_EMBEDDER_PORT
	$(VENV)/bin/gunicorn -c embedder/gunicorn.conf.py

loadtest: setup ## JMeter load test of the running API (make run first); writes var/loadtest/summary.{json,md}
	bash scripts/loadtest.sh

browser: ## Debian's chromium for the dashboard's browser test, when it is missing (apt-get)
	@bash scripts/setup.sh --browser

notebooks: setup ## Execute notebooks/final/*.ipynb (DC_NOTEBOOK_SAMPLE rows, default all; ~2 min) and render them to HTML in var/notebooks/
	$(PY) notebooks/final/run_notebooks.py --html-dir var/notebooks

test: setup browser ## Set up, check the layer contracts and the deployment's files, run every test (the fast tier first), then every benchmark's smoke run (what CI runs)
	$(VENV)/bin/lint-imports --no-cache
	$(MAKE) --no-print-directory deploy-lint
	$(MAKE) --no-print-directory terraform-moto
	$(MAKE) --no-print-directory test-fast
	$(PY) -m pytest -m "slow or db"
	$(MAKE) --no-print-directory bench-smoke

test-fast: setup ## The tests that load no TensorFlow and start no server or database (under a minute)
	$(PY) -m pytest -m "not slow and not db" --forbid-tensorflow

deploy-lint: setup ## hadolint, checkov on deployment/, docker-compose.yml against the Compose spec, terraform fmt/validate/test (tools installed into var/tools/ on first use)
	$(PY) scripts/deploy_lint.py

terraform-moto: setup ## (needs terraform, about 2.5 min) terraform apply of deployment/terraform/ against moto's server mode; writes var/terraform-moto/summary.{json,md}
	$(PY) scripts/terraform_moto.py

image-test: setup ## (slow, needs buildah and mmdebstrap) build the three images and smoke-test the API and the embedder from them
	$(PY) scripts/image_test.py

# What `make bench` runs, in order (bench/<name>.py). A missed target (exit status 1) does not
# stop the others: each writes its results, and the target fails at the end.
BENCHMARKS := bench_embedder bench_tf_threads bench_backends bench_heads bench_api bench_design sweep_sizing \
	bench_overload bench_log_size bench_reports bench_batch bench_accuracy

bench: setup demo ## Encoder, embedder, backends (TF, ONNX fp32, int8), heads, API, design a-f, sizing, overload, log size, reports on 1M rows, Spark batch scoring, accuracy against the published anchors (~90 min); writes bench/results/
	@failed=""; for name in $(BENCHMARKS); do \
		echo "== bench/$$name.py"; $(PY) bench/$$name.py; status=$$?; \
		[ $$status -ne 130 ] || exit 130; [ $$status -eq 0 ] || failed="$$failed $$name"; \
	done; \
	if [ -n "$$failed" ]; then echo "missed a target or failed (see above):$$failed"; exit 1; fi

bench-smoke: setup ## Every benchmark's --smoke run, two at a time (~2 min); writes var/bench-smoke/
	$(PY) bench/smoke.py --run

lint: setup ## ruff check and format check, and the layer contracts (import-linter)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

golden: ## (dev only) regenerate tests/golden/ with sentence-transformers in .venv-golden
	.venv-golden/bin/python scripts/make_golden_vectors.py

clean: ## Remove generated state (var/) and caches, keep .venv
	rm -rf var .pytest_cache .ruff_cache
