"""Fixtures: a real PostgreSQL metadata store (see tests/store/fixtures.py)."""

from tests.store.fixtures import *  # noqa: F403
