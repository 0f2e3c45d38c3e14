"""Alembic migrations of the Tidings database (run by ``tidings.store.database``)."""
