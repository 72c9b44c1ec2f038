"""Persistence: SQLAlchemy models, Alembic migrations, engines and the model registry.

`models` declares the tables, `migrations/` (Alembic) owns the schema, `db` builds engines and
runs the migrations, `registry` records and promotes trained versions. Nothing connects on import.
"""
