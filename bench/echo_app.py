"""The baseline of bench/bench_api.py: a bare Flask endpoint that only echoes JSON.

`POST /echo` answers the JSON body it got (`request.get_json` -> `jsonify`); nothing else, no
hooks, no metrics. It is served with the API's own gunicorn settings, so that the two differ
only in what the application does per request:

    DC_API_PORT=18100 gunicorn -c api/gunicorn.conf.py 'bench.echo_app:create_app()'

(gunicorn 27: an application given on the command line takes precedence over the config's
`wsgi_app`; the benchmark checks that the echo app, not the API, answers.)
"""

from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    """The echo app: `POST /echo` returns its JSON body."""
    app = Flask(__name__)
    app.json.sort_keys = False  # as the API: keys come back in the order they were sent

    @app.post("/echo")
    def echo():
        return jsonify(request.get_json())

    return app
