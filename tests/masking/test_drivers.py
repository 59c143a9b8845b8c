"""Masked sessions through the real gateway with pgjdbc, node-postgres and pgx (psycopg and asyncpg are in
test_gateway.py): the PII of the demo data in text and binary result formats, and bypass attempts.

The driver programs (tests/drivers) run the queries of a file and print every value they decoded, or the
server's error, as JSON; this side checks the values, the SQLSTATEs, and that nothing the program
printed holds a clear value read directly from the target."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.drivers import test_go, test_java, test_node
from tests.drivers.programs import ProgramRun, build, is_stale, require_tool, run_program
from tests.masking.conftest import ClearValues
from tests.policy.conftest import PolicyGateway

pytestmark = pytest.mark.drivers

PII = "select id, email, phone, ssn, card_number from shop.customers"
# Statements that would return masked data in clear: each must be refused with 42501, in the simple and
# the extended protocol, as the driver reports a server error.
BYPASSES = {
    "lower": "select lower(email) from shop.customers",
    "concat": "select email || '' from shop.customers",
    "row_to_json": "select row_to_json(c) from shop.customers c",
    "cast": "select ssn::int from shop.customers",
    "cast_in_where": "select id from shop.customers where ssn::int = 1",
    "aggregate": "select string_agg(card_number, ',') from shop.customers",
    "union": "select email from shop.customers union select 'x'",
    "cte_expression": "with x as (select upper(phone) p from shop.customers) select p from x",
}
# dana: alice's masks plus type-aware defaults on non-text columns of shop.orders, so that masked
# int4, numeric and timestamptz values are decoded in binary format too.
TYPED_POLICY: dict[str, Any] = {
    "kind": "Policy",
    "name": "drivers-typed-masks",
    "subjects": {"groups": ["typed"]},
    "connections": ["shop"],
    "rules": [{"allow": ["read"], "tables": ["shop.*"]}],
    "masking": [
        {
            "columns": ["shop.orders.customer_id", "shop.orders.amount", "shop.orders.created_at"],
            "function": "default",
        }
    ],
}
TYPED = "select id, customer_id, amount, created_at, status from shop.orders where id < 100 order by id"


@dataclass(frozen=True)
class Driver:
    name: str
    command: Callable[[], tuple[list[str], Path]]  # builds when stale; (argv, cwd)
    pii_binary: str  # the PII query this driver can decode in binary format
    typed_binary: str | None  # the typed query in binary format, if the driver can decode its types


def _go() -> tuple[list[str], Path]:
    tools = require_tool("go")
    if is_stale(test_go.BINARY, test_go.SOURCES):
        build([tools["go"], "build", "-mod=readonly", "-o", str(test_go.BINARY), "."], test_go.PROJECT)
    return [str(test_go.BINARY)], test_go.PROJECT


def _java() -> tuple[list[str], Path]:
    tools = require_tool("mvn", "java")
    if is_stale(test_java.JAR, [test_java.PROJECT / "pom.xml", test_java.PROJECT / "src"]):
        build([tools["mvn"], "-q", "-B", "package"], test_java.PROJECT)
    return [tools["java"], "-jar", str(test_java.JAR)], test_java.PROJECT


def _node() -> tuple[list[str], Path]:
    tools = require_tool("node", "npm")
    project = test_node.PROJECT
    if is_stale(test_node.INSTALLED, [project / "package.json", project / "package-lock.json"]):
        build([tools["npm"], "ci", "--no-audit", "--no-fund", "--loglevel=error"], project)
    return [tools["node"], "check.js"], project


DRIVERS = [
    Driver("pgx", _go, f"{PII} order by id", TYPED),
    Driver("pgjdbc", _java, f"{PII} order by id", TYPED),
    # node-postgres decodes binary values as UTF-8 first (tests/drivers/node/check.js): only text and
    # small integers survive, so its binary queries stay within those.
    Driver(
        "node-postgres",
        _node,
        "select id::int4, email, phone, ssn, card_number from shop.customers where id < 128 order by id",
        "select id::int4, customer_id, status from shop.orders where id < 100 order by id",
    ),
]


@dataclass(frozen=True)
class MaskedEndpoint:
    """`run_program`'s endpoint: an identity on the masking gateway and the queries file."""

    pg: PolicyGateway
    user: str
    queries: Path

    def env(self) -> dict[str, str]:
        gw = self.pg.gw
        return {
            "PGHOST": gw.host,
            "PGPORT": str(gw.port),
            "PGDATABASE": "shop",
            "PGUSER": self.user,
            "PGPASSWORD": self.pg.tokens[self.user],
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(gw.sslrootcert),
            "PGWARD_QUERIES": str(self.queries),
        }


def run_queries(
    driver: Driver, pg: PolicyGateway, user: str, queries: dict[str, tuple[str, str]], tmp: Path
) -> ProgramRun:
    path = tmp / f"{driver.name}-{user}.tsv"
    path.write_text("".join(f"{check}\t{mode}\t{sql}\n" for check, (mode, sql) in queries.items()))
    argv, cwd = driver.command()
    return run_program(argv, cwd, MaskedEndpoint(pg, user, path))


@pytest.fixture(scope="module")
def typed_gateway(masking_gateway: PolicyGateway) -> Iterator[PolicyGateway]:
    masking_gateway.identity("dana", "analysts", "typed")
    masking_gateway.gw.put_policy(TYPED_POLICY)
    deadline = time.monotonic() + 30
    while True:  # the gateway picks the policy up on its next poll
        try:
            with psycopg.connect(
                masking_gateway.conninfo("dana"), password=masking_gateway.tokens["dana"]
            ) as c:
                row = c.execute("select customer_id from shop.orders where id = 1").fetchone()
            if row == (0,):
                break
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the typed-masks policy did not take effect")
        time.sleep(0.2)
    try:
        yield masking_gateway
    finally:
        masking_gateway.gw.delete_policy(TYPED_POLICY["name"])


def result(run: ProgramRun, check: str) -> dict[str, Any]:
    assert check in run.results, f"{check} not reported\n{run.explain()}"
    res = run.results[check]
    assert res["ok"] is True, f"{check}: the driver failed: {res.get('detail')}\n{run.explain()}"
    return res["detail"]  # type: ignore[no-any-return]


def assert_masked_pii(rows: list[list[Any]], clear: ClearValues) -> None:
    assert rows
    for cid, email, phone, ssn, card in rows:
        original = clear.rows[int(cid)]
        assert email != original["email"] and email.endswith("@" + original["email"].split("@")[1])
        assert phone != original["phone"] and phone.endswith(original["phone"][-4:])
        assert card != original["card_number"] and card.endswith(original["card_number"][-4:])
        assert ssn != original["ssn"] and len(ssn) == 24  # the hash function's hex


def assert_nothing_leaked(run: ProgramRun, clear: ClearValues) -> None:
    leaked = clear.leaks([run.stdout, run.stderr])
    assert not leaked, f"clear values in the driver's output: {leaked[:5]}"


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.name)
def test_alice_masked_text_binary_and_bypasses(
    driver: Driver, masking_gateway: PolicyGateway, clear_values: ClearValues, tmp_path: Path
) -> None:
    queries = {"pii_text": ("text", f"{PII} order by id"), "pii_binary": ("binary", driver.pii_binary)}
    for name, sql in BYPASSES.items():
        queries[f"bypass_{name}_text"] = ("text", sql)
        queries[f"bypass_{name}_binary"] = ("binary", sql)
    queries["after_bypasses"] = ("binary", f"{PII} where id <= 5 order by id")
    run = run_queries(driver, masking_gateway, "alice", queries, tmp_path)
    assert run.returncode == 0, run.explain()

    text = result(run, "pii_text")
    assert len(text["rows"]) == len(clear_values.rows)
    assert set(text["formats"]) == {0}
    assert_masked_pii(text["rows"], clear_values)
    binary = result(run, "pii_binary")
    assert set(binary["formats"]) == {1}, binary["formats"]
    assert_masked_pii(binary["rows"], clear_values)
    # The same masked values whatever the format.
    by_id = {int(r[0]): r[1:] for r in text["rows"]}
    assert all(by_id[int(r[0])] == r[1:] for r in binary["rows"])
    for name in BYPASSES:
        for mode in ("text", "binary"):
            refused = result(run, f"bypass_{name}_{mode}")
            assert refused.get("sqlstate") == "42501", f"{name} ({mode}): {refused}"
            assert "masked" in refused["message"] or "mask" in (refused.get("detail") or "")
    # The session is still usable after the refusals.
    assert len(result(run, "after_bypasses")["rows"]) == 5
    assert_nothing_leaked(run, clear_values)


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.name)
def test_type_aware_defaults_decode_in_binary(
    driver: Driver, typed_gateway: PolicyGateway, clear_values: ClearValues, tmp_path: Path
) -> None:
    queries = {"typed_text": ("text", TYPED), "pii_binary": ("binary", driver.pii_binary)}
    if driver.typed_binary is not None:
        queries["typed_binary"] = ("binary", driver.typed_binary)
    run = run_queries(driver, typed_gateway, "dana", queries, tmp_path)
    assert run.returncode == 0, run.explain()
    text = result(run, "typed_text")
    assert len(text["rows"]) == 99
    for _id, customer_id, amount, created_at, status in text["rows"]:
        assert customer_id == "0" and amount == "0" and created_at.startswith("1970-01-01")
        assert status  # not masked
    if driver.typed_binary is not None:
        binary = result(run, "typed_binary")
        assert set(binary["formats"]) == {1}, binary["formats"]
        assert len(binary["rows"]) == 99
        for row in binary["rows"]:
            assert row[1] == "0", row
            if len(row) == 5:
                # pgjdbc scales a binary numeric to the column's typmod: 0.00.
                assert Decimal(row[2]) == 0 and "1970-01-01" in row[3], row
    assert_masked_pii(result(run, "pii_binary")["rows"], clear_values)
    assert_nothing_leaked(run, clear_values)
