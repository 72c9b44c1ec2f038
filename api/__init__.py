"""The prediction API: Flask router under gunicorn (see api/README.md)."""
