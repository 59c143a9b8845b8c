"""Serves the data plane's request queue on the asyncio loop (one wake-up per burst)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

import structlog

from control_plane.dataplane import Dataplane
from control_plane.proxy.service import DecisionService

log = structlog.get_logger("pgward.proxy")
_UNDECIDED: dict[str, Any] = {
    "action": "deny",
    "sqlstate": "42501",
    "message": "statement refused: pgward could not decide it, and refuses what it cannot decide",
    "cache": "none",
}


class BridgeDispatcher:
    def __init__(self, dataplane: Dataplane, service: DecisionService) -> None:
        self.dataplane = dataplane
        self.service = service
        self._fd = dataplane.wake_fd()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_wake)
        self._on_wake()  # anything queued before the reader was installed

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        for task in self._tasks:
            task.cancel()

    def _on_wake(self) -> None:
        try:
            os.read(self._fd, 4096)
        except BlockingIOError:
            pass
        assert self._loop is not None
        for request_id, kind, payload in self.dataplane.take_requests():
            if kind == "decide":
                # Pure CPU (parse + rules): answered inline, no task per statement; only statements that
                # need approval (a review in the store) are answered by a task.
                answer = self._safe_decide(payload)
                if isinstance(answer, dict):
                    self._respond(request_id, answer)
                else:
                    task = self._loop.create_task(self._later(request_id, payload, answer))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            elif kind == "authenticate":
                task = self._loop.create_task(self._authenticate(request_id, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == "await_review":
                # A held statement: answered when its review is decided (minutes, maybe).
                review = self.service.reviews.holds.wait(payload["review_id"])
                task = self._loop.create_task(self._later(request_id, payload, review))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == "withdraw_review":
                task = self._loop.create_task(self.service.reviews.holds.withdraw(payload["review_id"]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == "session_end":
                self.service.session_ended(payload)

    def _safe_decide(self, payload: dict[str, Any]) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        try:
            return self.service.decide(payload)
        except Exception:
            log.exception("statement decision failed", session_id=payload.get("session_id"))
            return _UNDECIDED

    async def _later(
        self, request_id: int, payload: dict[str, Any], answer: Coroutine[Any, Any, dict[str, Any]]
    ) -> None:
        try:
            result = await answer
        except Exception:
            log.exception("statement review failed", session_id=payload.get("session_id"))
            result = _UNDECIDED
        self._respond(request_id, result)

    async def _authenticate(self, request_id: int, payload: dict[str, Any]) -> None:
        try:
            answer = await self.service.authenticate(payload)
        except Exception:
            # Never echo the payload: it holds the credential.
            log.exception("authentication failed inside pgward", session_id=payload.get("session_id"))
            answer = {
                "ok": False,
                "sqlstate": "28000",
                "message": "pgward could not verify the credential (internal error; see the gateway log)",
            }
        self._respond(request_id, answer)

    def _respond(self, request_id: int, answer: dict[str, Any]) -> None:
        try:
            self.dataplane.respond(request_id, answer)
        except ValueError:
            log.exception("invalid answer for the data plane", request_id=request_id)
