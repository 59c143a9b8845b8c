"""Session recordings through the real gateway: masked values only, no credential, complete."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import psycopg

from control_plane.recordings.messages import messages
from control_plane.recordings.reader import Recording, summary
from tests.fixtures.gateway import PGWARD
from tests.masking.conftest import ClearValues
from tests.policy.conftest import PolicyGateway


def _recordings_dir(gw: PolicyGateway) -> Path:
    return Path(gw.gw.env["PGWARD_STATE_DIR"]) / "recordings"


def _new_recording(gw: PolicyGateway, before: set[Path], identity: str) -> Path:
    """The recording of the session that just closed (the gateway finishes it after the client left)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in set(_recordings_dir(gw).glob("*.pgwrec")) - before:
            s = summary(path)
            if s.complete and s.meta["identity_detail"]["username"] == identity:
                return path
        time.sleep(0.1)
    raise AssertionError(f"no finished recording for {identity}")


def _stream(path: Path, direction: str) -> bytes:
    with Recording.open(path) as rec:
        return b"".join(f.data for f in rec.frames() if f.direction == direction)


def test_masked_session_is_recorded_as_the_client_saw_it(
    masking_gateway: PolicyGateway, clear_values: ClearValues
) -> None:
    before = set(_recordings_dir(masking_gateway).glob("*.pgwrec"))
    token = masking_gateway.tokens["alice"]
    with psycopg.connect(masking_gateway.conninfo("alice"), password=token) as conn:
        seen = conn.execute(
            "select id, email, ssn from shop.customers where id <= %s order by id", (20,)
        ).fetchall()
    assert len(seen) == 20
    path = _new_recording(masking_gateway, before, "alice")

    raw = path.read_bytes()
    to_client = _stream(path, "server")
    from_client = _stream(path, "client")
    # The client saw masked values, and exactly those are in the recording.
    for _id, email, ssn in seen:
        assert email.encode() in to_client and ssn.encode() in to_client
    for customer_id in range(1, 21):
        for column in ("email", "ssn"):
            clear = clear_values.rows[customer_id][column].encode()
            assert clear not in to_client, f"clear {column} of customer {customer_id} recorded"
    # The statement and its parameter are there; the credential of the startup exchange is not.
    assert b"select id, email, ssn from shop.customers" in from_client
    for blob in (raw, to_client, from_client):
        assert token.encode() not in blob
    with Recording.open(path) as rec:
        assert rec.meta["connection"] == "shop"
        assert rec.meta["identity_detail"]["groups"] == ["analysts"]
        tags = [m.tag for m in messages(rec.frames()) if m.direction == "client"]
        assert rec.trailer is not None and rec.trailer["end_reason"] == "client closed"
    assert "P" in tags and "B" in tags and "E" in tags and tags[-1] == "X"


def test_million_row_result_is_recorded_completely(masking_gateway: PolicyGateway) -> None:
    before = set(_recordings_dir(masking_gateway).glob("*.pgwrec"))
    token = masking_gateway.identity("bob", "dba", "admins")
    env = {**os.environ, "PGPASSWORD": token}
    sql = "select g, repeat('x', 40) from generate_series(1, 1000000) g"
    r = subprocess.run(
        ["psql", "-X", "-qAt", masking_gateway.conninfo("bob"), "-c", sql, "-o", "/dev/null"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    path = _new_recording(masking_gateway, before, "bob")
    rows = 0
    last = b""
    with Recording.open(path) as rec:
        for m in messages(rec.frames()):
            if m.direction == "server" and m.tag == "D":
                rows += 1
                last = m.body
            if m.direction == "server" and m.tag == "C":
                complete = m.body
    assert rows == 1_000_000
    assert b"1000000" in last and b"x" * 40 in last
    assert complete.rstrip(b"\0") == b"SELECT 1000000"
    # Memory stays bounded structurally: the writer's queue holds a fixed number of fixed-size
    # blocks, and queue + the block being written never held more (RSS: bench/recording.py).
    metrics = httpx.get(f"{masking_gateway.gw.api_url}/metrics", timeout=30).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("pgward_proxy_recording")
    }
    capacity = values["pgward_proxy_recording_queue_blocks_capacity"]
    block = values["pgward_proxy_recording_block_bytes_max"]
    assert capacity == 64 and block == 65536
    assert 0 < values["pgward_proxy_recording_queue_bytes_peak"] <= (capacity + 1) * block
    assert summary(path).size < 20 * 1024 * 1024, "1M rows compress in 64 KiB zstd blocks"


def test_credential_never_recorded_with_psql(masking_gateway: PolicyGateway) -> None:
    before = set(_recordings_dir(masking_gateway).glob("*.pgwrec"))
    token = masking_gateway.tokens["alice"]
    env = {**os.environ, "PGPASSWORD": token}
    r = subprocess.run(
        ["psql", "-X", "-qAt", masking_gateway.conninfo("alice"), "-c", "select 41 + 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "42", r.stderr
    path = _new_recording(masking_gateway, before, "alice")
    assert token.encode() not in path.read_bytes()
    assert token.encode() not in _stream(path, "client")
    assert b"select 41 + 1" in _stream(path, "client")


def test_sessions_api_lists_and_replay_reproduces_the_masked_session(
    masking_gateway: PolicyGateway, clear_values: ClearValues
) -> None:
    before = set(_recordings_dir(masking_gateway).glob("*.pgwrec"))
    alice = masking_gateway.tokens["alice"]
    bob = masking_gateway.identity("bob", "dba", "admins")
    with psycopg.connect(masking_gateway.conninfo("alice"), password=alice, autocommit=True) as conn:
        seen = conn.execute(
            "select id, email, phone from shop.customers where id <= %s order by id", (5,)
        ).fetchall()
        try:
            conn.execute("select no_such_column from shop.customers")
        except psycopg.errors.UndefinedColumn:
            pass
    path = _new_recording(masking_gateway, before, "alice")
    session_id = path.stem
    api = masking_gateway.gw.api_url

    # Only admins and auditors read recordings.
    assert httpx.get(f"{api}/v1/sessions", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    headers = {"Authorization": f"Bearer {bob}"}
    listed = httpx.get(
        f"{api}/v1/sessions", params={"identity": "alice", "connection": "shop"}, headers=headers
    )
    assert listed.status_code == 200, listed.text
    items = {item["id"]: item for item in listed.json()["items"]}
    assert session_id in items
    item = items[session_id]
    assert item["username"] == "alice" and item["connection"] == "shop" and item["complete"]
    assert item["size"] == path.stat().st_size and item["ended_at"] >= item["started_at"]
    assert (
        httpx.get(f"{api}/v1/sessions", params={"identity": "nobody"}, headers=headers).json()["items"] == []
    )
    masking_gateway.gw.psql("select 1", password=alice, conninfo=masking_gateway.conninfo("alice"))
    _new_recording(masking_gateway, before | {path}, "alice")
    page = httpx.get(f"{api}/v1/sessions", params={"limit": 1}, headers=headers).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    second = httpx.get(
        f"{api}/v1/sessions", params={"limit": 1, "cursor": page["next_cursor"]}, headers=headers
    )
    assert second.json()["items"][0]["id"] != page["items"][0]["id"]
    one = httpx.get(f"{api}/v1/sessions/{session_id}", headers=headers).json()
    assert one["metadata"]["client_addr"].startswith("127.0.0.1:")

    env = {**masking_gateway.gw.env, "PGWARD_API_URL": api, "PGWARD_TOKEN": bob}
    r = subprocess.run(
        [*PGWARD, "replay", session_id, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    statements = [e for e in events if e["type"] == "statement"]
    query = next(e for e in statements if "from shop.customers where id" in e["sql"])
    assert query["protocol"] == "extended" and query["params"] == [5]
    results = [
        e
        for e in events
        if e["type"] == "result" and [c["name"] for c in e["columns"]] == ["id", "email", "phone"]
    ]
    # Text-format values replay as the text the client received.
    assert [tuple(row) for row in results[0]["rows"]] == [tuple(str(v) for v in row) for row in seen]
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["sqlstate"] == "42703"
    assert events[0]["type"] == "session" and events[-1]["type"] == "end" and events[-1]["complete"]
    for row in seen:
        assert clear_values.rows[row[0]]["email"] not in r.stdout

    text = subprocess.run(
        [*PGWARD, "replay", session_id, "--no-wait"], env=env, capture_output=True, text=True, timeout=120
    )
    assert text.returncode == 0, text.stderr
    assert "from shop.customers where id" in text.stdout and "(5 rows)" in text.stdout
    assert seen[0][1] in text.stdout and "42703" in text.stdout
    # The download was audited.
    audit = httpx.get(f"{api}/v1/audit/events", params={"kind": "access"}, headers=headers).json()["items"]
    assert any(e.get("resource") == session_id or session_id in json.dumps(e) for e in audit)
