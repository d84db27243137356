"""Alembic migrations of the history database (run them with ``vitals db upgrade``)."""
