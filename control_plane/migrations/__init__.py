"""Alembic migrations of the metadata store; run them with `pgward migrate`."""
