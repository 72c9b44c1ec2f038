"""The naive baseline of bench/bench_design.py: what the design starts from, nothing more.

`POST /predict/<model>` with `{"text": "..."}`, per request and in process:
  1. encode the text with the TF SavedModel (`dc.nlp.encoder.load_encoder(handle, "tf")`,
     loaded in each worker after fork): one `encoder.encode([text])` per request, no phrase
     cache, no micro-batching;
  2. score the head with Keras: `keras.saving.load_model(<version>/models/<arch>/model.keras)`,
     `model(x, training=False)`;
  3. one synchronous INSERT into `inferences` (SQLAlchemy Core), committed per request.

Served with the API's own gunicorn settings, so only the application differs:

    DC_API_PORT=18200 DC_DATABASE_URL=... DC_NAIVE_MODELS=banking77 \\
        gunicorn -c api/gunicorn.conf.py 'bench.naive_app:create_app()'

DC_NAIVE_MODELS (comma-separated, default banking77): the models each worker loads. The
version is the registry's promoted one (DC_DATABASE_URL, region DC_SERVING_REGION), else the
newest folder under var/artifacts/<region>/<model>/. The encoder and heads load in a background
thread (the worker answers /health at once; /ready says 503 until loaded; a /predict that
arrives earlier waits for the load).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request

REPO = Path(__file__).resolve().parent.parent
TOP_K = 3


def _model_folder(settings, engine, name: str) -> tuple[str, str, Path]:
    """(version, architecture, folder of model.keras) of the promoted version of `name`."""
    from sqlalchemy import text

    version_path = None
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT version, artifact_uri FROM model_versions WHERE name = :n "
                    "AND region = :r AND status = 'promoted'"
                ),
                {"n": name, "r": settings.serving_region},
            ).first()
        if row is not None and row.artifact_uri.startswith("file://"):
            version_path = Path(row.artifact_uri.removeprefix("file://"))
    except Exception:  # no registry: the newest folder below
        version_path = None
    if version_path is None or not version_path.is_dir():
        root = REPO / "var" / "artifacts" / settings.serving_region / name
        version_path = sorted(p for p in root.iterdir() if p.is_dir())[-1]
    manifest = json.loads((version_path / "manifest.json").read_text())
    architecture = manifest["architecture"]
    return version_path.name, architecture, version_path / "models" / architecture


def create_app() -> Flask:
    """The naive app: encoder + Keras heads + one INSERT per request, in each worker."""
    from sqlalchemy import insert

    from dc.config import get_settings
    from persistence.db import make_engine
    from persistence.models import Inference

    settings = get_settings()
    names = [n.strip() for n in os.environ.get("DC_NAIVE_MODELS", "banking77").split(",") if n]
    engine = make_engine(settings.database_url)
    table = Inference.__table__
    state: dict[str, Any] = {"encoder": None, "heads": {}, "error": None}
    loaded = threading.Event()

    def load() -> None:
        try:
            import keras

            from dc.artifacts import ENCODERS_FILE, load_label_encoder
            from dc.nlp.encoder import load_encoder

            # The design's starting point: the TF SavedModel, as the product began.
            state["encoder"] = load_encoder(settings.embedder_handle, "tf")
            for name in names:
                version, architecture, folder = _model_folder(settings, engine, name)
                model = keras.saving.load_model(folder / "model.keras", compile=False)
                labels = [str(c) for c in load_label_encoder(folder / ENCODERS_FILE).classes_]
                state["heads"][name] = (version, architecture, model, labels)
        except Exception as exc:  # reported by /ready and /predict
            state["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            loaded.set()

    threading.Thread(target=load, name="naive-load", daemon=True).start()
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.get("/ready")
    def ready():
        if not loaded.is_set() or state["error"]:
            return jsonify(ready=False, error=state["error"]), 503
        return jsonify(ready=True, models=sorted(state["heads"]))

    @app.post("/predict/<model>")
    def predict(model: str):
        started = time.perf_counter()
        loaded.wait()
        if state["error"]:
            return jsonify(error=state["error"]), 503
        if model not in state["heads"]:
            return jsonify(error=f"unknown model {model}"), 404
        body = request.get_json(silent=True) or {}
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return jsonify(error="text must be a non-empty string"), 422
        version, architecture, head, labels = state["heads"][model]
        encoder = state["encoder"]
        x = encoder.encode([text])
        probabilities = head(x, training=False).numpy()[0]
        best = probabilities.argsort()[::-1][:TOP_K]
        top_k = [{"label": labels[i], "probability": float(probabilities[i])} for i in best]
        request_id = uuid.uuid4().hex
        latency_ms = 1000 * (time.perf_counter() - started)
        with engine.begin() as connection:  # one INSERT, committed, per request
            connection.execute(
                insert(table).values(
                    request_id=request_id,
                    item=0,
                    model=model,
                    region=settings.serving_region,
                    version=version,
                    model_type=architecture,
                    input_text=text,
                    predicted_label=top_k[0]["label"],
                    probability=top_k[0]["probability"],
                    top_k=top_k,
                    latency_ms=latency_ms,
                    cache_hit=False,
                    embedder_fingerprint=encoder.fingerprint,
                )
            )
        return jsonify(
            request_id=request_id,
            model=model,
            version=version,
            label=top_k[0]["label"],
            probability=top_k[0]["probability"],
            top_k=top_k,
        )

    return app
