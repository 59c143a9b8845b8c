"""Startup through the gateway: TLS negotiation, protocol versions, credentials, connection names."""

from __future__ import annotations

import struct

import psycopg
import pytest

from tests.fixtures.gateway import Gateway
from tests.gateway.wire import GSSENC_REQUEST, Wire, startup_packet


def test_psql_with_api_key_over_verified_tls(gateway: Gateway) -> None:
    r = gateway.psql("select count(*) from shop.customers", "show ssl")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000", "off"]  # ssl is off upstream (loopback), on at the gateway


def test_wrong_key_is_28P01_without_echoing_it(gateway: Gateway) -> None:
    bad = gateway.ci_token[:-4] + "AAAA"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gateway.conninfo(), password=bad)
    assert "28P01" in str(info.value) or "password" in str(info.value).lower() or "key" in str(info.value)
    assert bad not in str(info.value)
    r = gateway.psql("select 1", password=bad)
    assert r.returncode != 0 and bad not in r.stderr


def test_refusal_sqlstates_over_the_wire(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", "pgw_nothing_here")
    assert msgs[-1].tag == b"E" and msgs[-1].fields()["C"] == "28P01"
    w.close()


def test_key_of_another_identity_is_refused(gateway: Gateway) -> None:
    # The startup user must be the identity the key belongs to.
    r = gateway.psql("select 1", conninfo=gateway.conninfo(user="admin"))
    assert r.returncode != 0
    assert "28P01" in r.stderr or "does not belong" in r.stderr or "not" in r.stderr


def test_unknown_connection_name(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token, database="nope")
    error = msgs[-1].fields()
    assert error["C"] == "3D000" and "nope" in error["M"]


def test_plaintext_client_is_refused(gateway: Gateway) -> None:
    r = gateway.psql("select 1", conninfo=gateway.conninfo(sslmode="disable"))
    assert r.returncode != 0
    assert "requires TLS" in r.stderr


def test_plaintext_refusal_sqlstate(gateway: Gateway) -> None:
    w = Wire.connect_plain(gateway.host, gateway.port)
    w.send(startup_packet({"user": "ci", "database": "shop"}))
    m = w.read()
    assert m is not None and m.tag == b"E"
    assert m.fields()["C"] == "28000" and m.fields()["S"] == "FATAL"
    assert w.read() is None


def test_gssenc_request_gets_N_then_tls_works(gateway: Gateway) -> None:
    r = gateway.psql("select 1", conninfo=gateway.conninfo(gssencmode="prefer"))
    assert r.returncode == 0, r.stderr
    w = Wire.connect_plain(gateway.host, gateway.port)
    w.send(struct.pack("!II", 8, GSSENC_REQUEST))
    assert w.sock.recv(1) == b"N"
    w.close()


def test_direct_tls_needs_alpn(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert, direct=True, alpn=["postgresql"])
    msgs = w.login("ci", gateway.ci_token)
    assert msgs[-1].tag == b"Z"
    w.close()
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert, direct=True, alpn=None)
    w.send(startup_packet({"user": "ci", "database": "shop"}))
    m = w.read()
    assert m is not None and m.tag == b"E" and "ALPN" in m.fields()["M"]


def test_protocol_32_gets_a_long_cancel_key(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token, minor=2)
    assert not any(m.tag == b"v" for m in msgs), "3.2 is supported: no negotiation"
    key = next(m for m in msgs if m.tag == b"K")
    assert len(key.body) == 4 + 32
    w.close()


def test_newer_minor_and_unknown_options_are_negotiated(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token, minor=9, extra={"_pq_.frobnicate": "on"})
    npv = next(m for m in msgs if m.tag == b"v")
    newest, count = struct.unpack("!II", npv.body[:8])
    assert newest == (3 << 16) | 2 and count == 1
    assert b"_pq_.frobnicate" in npv.body
    assert msgs[-1].tag == b"Z"
    key = next(m for m in msgs if m.tag == b"K")
    assert len(key.body) == 4 + 32
    w.close()


def test_protocol_2_is_refused(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    w.send(startup_packet({"user": "ci", "database": "shop"}, major=2, minor=0))
    m = w.read()
    assert m is not None and m.tag == b"E"
    assert m.fields()["S"] == "FATAL"


def test_startup_parameters_outside_the_allow_list_are_refused(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    msgs = w.login("ci", gateway.ci_token, extra={"role": "postgres"})
    error = msgs[-1].fields()
    assert error["C"] == "42501" and "role" in error["M"]
    ok = gateway.psql("show application_name", conninfo=gateway.conninfo(application_name="pgward-test"))
    assert ok.stdout.strip() == "pgward-test", ok.stderr


def test_replication_connections_are_refused(gateway: Gateway) -> None:
    w = Wire.connect_tls(gateway.host, gateway.port, gateway.sslrootcert)
    w.send(startup_packet({"user": "ci", "database": "shop", "replication": "database"}))
    m = w.read()
    assert m is not None and m.tag == b"E" and m.fields()["C"] == "0A000"
