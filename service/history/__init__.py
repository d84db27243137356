"""The SQL history: table models, the database (engine, Alembic migrations in
``migrations/``, read queries) and the sink that fills it from the output topics.

May import ``service.runtime``, ``service.processing``, ``service.model`` and ``schemas``;
never the stream topology, the command line or the tools.
"""
