"""Test configuration: fixtures live in tests/fixtures/ and are registered here as plugins."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.gateway",
    "tests.fixtures.oidc",
]
