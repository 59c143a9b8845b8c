"""Content detectors through a real `pgward serve`: output columns with no table origin are scanned,
and a value holding an e-mail address, a card number, an SSN or a phone number is masked whole.

`dora` (group scanned) has detectors and no masking rules, so her session masks only by content;
`milo` (analysts + scanned) has the demo's masking rules and the detectors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.masking.conftest import ClearValues
from tests.policy.conftest import PolicyGateway

DETECTED = "[detected]"
POLICY: dict[str, Any] = {
    "kind": "Policy",
    "name": "scanned-read-shop",
    "subjects": {"groups": ["scanned"]},
    "connections": ["shop"],
    "run_as": "shop_reader",
    "rules": [{"allow": ["read", "copy_out"], "tables": ["shop.*"]}],
    "detectors": {"kinds": ["email", "card", "ssn", "phone"], "function": "redact", "text": DETECTED},
}
# Expressions over every PII column: no table origin, so only the detectors stand between them and
# the client in dora's session.
EXPRESSIONS = (
    "select id, email || '', lower(phone), ' ' || ssn, card_number::varchar, name || '' "
    "from shop.customers order by id"
)


def connect(pg: PolicyGateway, name: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.conninfo(name), password=pg.tokens[name], autocommit=True, **kwargs)


@pytest.fixture(scope="module")
def scanned(masking_gateway: PolicyGateway) -> Iterator[PolicyGateway]:
    masking_gateway.identity("dora", "scanned")
    masking_gateway.identity("milo", "analysts", "scanned")
    masking_gateway.gw.put_policy(POLICY)
    deadline = time.monotonic() + 30
    while True:  # the gateway picks the policy up on its next poll
        try:
            with connect(masking_gateway, "dora") as conn:
                conn.execute("select 1")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield masking_gateway
    finally:
        masking_gateway.gw.delete_policy(POLICY["name"])


def test_expressions_are_masked_by_content(scanned: PolicyGateway, clear_values: ClearValues) -> None:
    with connect(scanned, "dora") as dora:
        rows = dora.execute(EXPRESSIONS).fetchall()
        with dora.cursor(binary=True) as cur:
            binary = cur.execute(EXPRESSIONS).fetchall()
        prepared = [dora.execute(EXPRESSIONS, prepare=True).fetchall() for _ in range(3)][-1]
    assert len(rows) == len(clear_values.rows)
    for result in (rows, binary, prepared):
        assert result == rows
        assert not clear_values.leaks([v for r in result for v in r[1:]])
        for row in result:
            assert list(row[1:5]) == [DETECTED] * 4, row
            # Names hold nothing detectable: they pass unchanged.
            assert row[5] != DETECTED


def test_columns_with_an_origin_are_not_scanned(scanned: PolicyGateway, clear_values: ClearValues) -> None:
    """Detectors are a net for columns without an origin; dora has no masking rule for these columns."""
    with connect(scanned, "dora") as dora:
        row = dora.execute("select id, email, ssn from shop.customers where id = 3").fetchone()
    assert row is not None
    assert row[1:] == (clear_values.rows[3]["email"], clear_values.rows[3]["ssn"])


def test_json_and_near_misses(scanned: PolicyGateway, clear_values: ClearValues) -> None:
    with connect(scanned, "dora") as dora:
        row = dora.execute(
            "select json_build_object('e', email), to_jsonb(c), "
            "'666-12-3456', '4111 1111 1111 1112', 'user@localhost', "
            "'call (212) 555-0123', 'ssn 123-45-6789' "
            "from shop.customers c where id = 1"
        ).fetchone()
        with dora.cursor(binary=True) as cur:
            brow = cur.execute("select to_jsonb(c) from shop.customers c where id = 1").fetchone()
    assert row is not None and brow is not None
    # JSON carrying PII becomes JSON null (a valid value of the type), in text and binary format.
    assert row[0] is None and row[1] is None and brow[0] is None
    # Invalid SSN area, a failed Luhn check, a domain without a dot: not detected.
    assert row[2:5] == ("666-12-3456", "4111 1111 1111 1112", "user@localhost")
    assert row[5:] == (DETECTED, DETECTED)


def test_text_arrays_become_empty(scanned: PolicyGateway, clear_values: ClearValues) -> None:
    sql = "select array_agg(email), array_agg(name::varchar) from shop.customers where id <= 3"
    with connect(scanned, "dora") as dora:
        row = dora.execute(sql).fetchone()
        with dora.cursor(binary=True) as cur:
            brow = cur.execute(sql).fetchone()
        clean = dora.execute("select array['a', 'b']").fetchone()
    assert row is not None and brow is not None
    # An array holding a detected item has no masked form of its own: it comes back empty.
    assert row[0] == [] and brow[0] == []
    assert len(row[1]) == 3 and row[1] == brow[1]
    assert clean == (["a", "b"],)


def test_copy_out_is_refused(scanned: PolicyGateway) -> None:
    with connect(scanned, "dora") as dora:
        with pytest.raises(errors.InsufficientPrivilege, match="content detectors"):
            with dora.cursor().copy("copy (select email from shop.customers) to stdout") as copy:
                list(copy)
        # The session goes on.
        assert dora.execute("select 1").fetchone() == (1,)


def test_masked_session_with_detectors(scanned: PolicyGateway, clear_values: ClearValues) -> None:
    """milo: masked columns stay masked by their rules, expressions over them are still refused by leak
    analysis, and origin-less values that hold PII from elsewhere are masked by content."""
    with connect(scanned, "milo") as milo:
        rows = milo.execute("select id, email, ssn from shop.customers order by id").fetchall()
        assert not clear_values.leaks([v for r in rows for v in r[1:]])
        assert all(r[1].startswith("****@") for r in rows)
        with pytest.raises(errors.InsufficientPrivilege, match="masked"):
            milo.execute("select lower(email) from shop.customers")
        literal = milo.execute(
            "select 'write to jane.doe@example.com', upper(name) from shop.customers"
        ).fetchone()
    assert literal is not None and literal[0] == DETECTED and literal[1] != DETECTED


def test_sessions_without_detectors_are_unchanged(masking_gateway: PolicyGateway) -> None:
    with connect(masking_gateway, "bob") as bob:
        assert bob.execute("select 'ssn 123-45-6789'").fetchone() == ("ssn 123-45-6789",)
