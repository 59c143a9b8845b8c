"""Held mode through the real gateway: the client waits in its session with a NOTICE naming the
review; approval runs exactly the reviewed statement once, denial and expiry refuse it with the
reason, a cancel withdraws the review, and a decision taken through another pgward process sharing
the store releases the statement (LISTEN/NOTIFY)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.approvals.conftest import ApprovalsGateway
from tests.approvals.test_reviews import table
from tests.fixtures.gateway import PGWARD, Gateway, _wait_ready, free_port, stop_gateway

REVIEW = re.compile(r"review ([0-9a-f-]{36})")


class HeldPsql:
    """psql running one statement in the background; its NOTICE tells the review id."""

    def __init__(self, gw: Gateway, token: str, user: str, sql: str) -> None:
        env = {**os.environ, "PGPASSWORD": token}
        args = ["psql", "-X", "-v", "ON_ERROR_STOP=1", gw.conninfo(user=user), "-c", sql]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def review(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stderr_lines):
                match = REVIEW.search(line)
                if line.startswith("NOTICE") and match:
                    return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("no NOTICE with a review id: " + "".join(self.stderr_lines))

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        # Not communicate(): the reader thread owns stderr.
        self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self._reader.join(timeout=5)
        return self.proc.returncode, out, "".join(self.stderr_lines)


def count(ag: ApprovalsGateway, name: str) -> int:
    with ag.owner() as conn:
        row = conn.execute(f"SELECT count(*) FROM public.{name}").fetchone()
        assert row is not None
        return int(row[0])


def decide(
    ag: ApprovalsGateway, who: str, rid: str, how: str = "approve", api_url: str | None = None, **body: Any
) -> Any:
    with ag.api(who) as api:
        if api_url is not None:
            api.base_url = api_url  # type: ignore[assignment]
        return api.post(f"/v1/reviews/{rid}/{how}", json=body or None)


def test_held_statement_runs_once_when_approved(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_held1")
    held = HeldPsql(ag.gw, ag.tokens["bob"], "bob", "DELETE FROM public.apv_held1 WHERE id = 1")
    rid = held.review()
    assert held.proc.poll() is None, "psql must still be waiting"
    assert count(ag, "apv_held1") == 3
    with ag.api("carol") as api:
        shown = api.get(f"/v1/reviews/{rid}").json()
    assert shown["mode"] == "held" and shown["state"] == "pending"
    assert shown["sql"] == "DELETE FROM public.apv_held1 WHERE id = 1"
    assert decide(ag, "carol", rid, comment="go").json()["state"] == "approved"
    code, out, err = held.finish()
    assert code == 0 and "DELETE 1" in out, err
    assert count(ag, "apv_held1") == 2
    with ag.api("carol") as api:
        assert api.get(f"/v1/reviews/{rid}").json()["state"] == "consumed"
    # The statement's audit record names the review that let it run.
    with ag.api("admin") as api:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            records = api.get("/v1/audit/events", params={"kind": "statement", "q": "apv_held1"}).json()[
                "items"
            ]
            if any(r.get("approval") == rid for r in records):
                break
            time.sleep(0.1)
    ran = [r for r in records if r.get("approval") == rid]
    assert ran and ran[0]["statement"] == "DELETE FROM public.apv_held1 WHERE id = 1", records


def test_held_statement_denied_gets_the_comment(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_held2")
    held = HeldPsql(ag.gw, ag.tokens["bob"], "bob", "UPDATE public.apv_held2 SET v = 'x' WHERE id = 2")
    rid = held.review()
    decide(ag, "carol", rid, how="deny", comment="not during the sale")
    code, _, err = held.finish()
    assert code != 0 and "ERROR:  statement refused: review" in err and "not during the sale" in err, err
    with ag.owner() as conn:
        assert conn.execute("SELECT v FROM public.apv_held2 WHERE id = 2").fetchone() == ("v2",)


def test_held_statement_times_out(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_hquick1")
    held = HeldPsql(ag.gw, ag.tokens["bob"], "bob", "DELETE FROM public.apv_hquick1 WHERE id = 1")
    rid = held.review()
    code, _, err = held.finish()
    assert code != 0 and "was not decided in time" in err, err
    assert count(ag, "apv_hquick1") == 3
    late = decide(ag, "carol", rid)
    assert late.status_code == 409


def test_cancel_while_held_withdraws_the_review(approvals_gateway: ApprovalsGateway) -> None:
    ag = approvals_gateway
    table(ag, "apv_held3")
    notices: list[str] = []
    with ag.connect("bob") as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.message_primary} {d.message_detail}"))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                psycopg.ClientCursor(conn).execute("DELETE FROM public.apv_held3 WHERE id = 3")
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        while not notices and time.monotonic() < deadline:
            time.sleep(0.02)
        match = REVIEW.search(notices[0]) if notices else None
        assert match, notices
        rid = match.group(1)
        conn.cancel_safe()
        worker.join(timeout=30)
        assert failure and isinstance(failure[0], errors.QueryCanceled), failure
        assert rid in (failure[0].diag.message_detail or "")
        # The session is still usable.
        assert conn.execute("SELECT count(*) FROM public.apv_held3").fetchone() == (3,)
    with ag.api("carol") as api:
        deadline = time.monotonic() + 30
        while api.get(f"/v1/reviews/{rid}").json()["state"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.get(f"/v1/reviews/{rid}").json()["state"] == "withdrawn"
    assert decide(ag, "carol", rid).status_code == 409


@pytest.fixture
def second_gateway(approvals_gateway: ApprovalsGateway, tmp_path: Path) -> Iterator[Gateway]:
    """Another `pgward serve` process on the same metadata store (as a second replica would be)."""
    first = approvals_gateway.gw
    port, api_port = free_port(), free_port()
    env = {
        **first.env,
        "PGWARD_PROXY_LISTEN": f"127.0.0.1:{port}",
        "PGWARD_API_LISTEN": f"127.0.0.1:{api_port}",
    }
    log_file = tmp_path / "second.log"
    gw = Gateway(
        host="127.0.0.1",
        port=port,
        api_url=f"http://127.0.0.1:{api_port}",
        sslrootcert=first.sslrootcert,
        admin_token=first.admin_token,
        ci_token=first.ci_token,
        env=env,
        log_file=log_file,
    )
    with log_file.open("wb") as log:
        gw.process = subprocess.Popen([*PGWARD, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_ready(gw, time.monotonic() + 60)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def test_held_on_one_process_approved_through_another(
    approvals_gateway: ApprovalsGateway, second_gateway: Gateway
) -> None:
    ag = approvals_gateway
    table(ag, "apv_held4")
    held = HeldPsql(second_gateway, ag.tokens["bob"], "bob", "DELETE FROM public.apv_held4 WHERE id = 3")
    rid = held.review()
    # Decided through the first process's API: the second process's session is released.
    assert decide(ag, "carol", rid, comment="from the other replica").json()["state"] == "approved"
    code, out, err = held.finish()
    assert code == 0 and "DELETE 1" in out, err
    with ag.api("carol") as api:
        assert api.get(f"/v1/reviews/{rid}").json()["state"] == "consumed"
