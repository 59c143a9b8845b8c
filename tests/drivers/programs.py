"""Building (cached) and running the driver programs, and reading their one-JSON-object-per-line output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DRIVERS_DIR = Path(__file__).resolve().parent

# The checks every driver program reports (some add more).
CHECKS = (
    "connect_tls",
    "simple_query",
    "prepared_statement",
    "binary_results",
    "transaction_rollback",
    "copy_out",
    "copy_in",
    "cancel",
    "error_recovery",
)


@dataclass
class ProgramRun:
    returncode: int
    results: dict[str, dict[str, Any]]
    stdout: str
    stderr: str
    build_seconds: float | None = None
    run_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


def require_tool(*names: str) -> dict[str, str]:
    """The paths of the named executables; the test FAILS (not skips) when one is missing."""
    found = {n: shutil.which(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        pytest.fail(
            f"required toolchain missing from PATH: {', '.join(missing)} (CI installs it)", pytrace=False
        )
    return {n: p for n, p in found.items() if p is not None}


def newest_mtime(paths: Iterable[Path]) -> float:
    newest = 0.0
    for p in paths:
        if p.is_dir():
            newest = max([newest, *(f.stat().st_mtime for f in p.rglob("*") if f.is_file())])
        elif p.exists():
            newest = max(newest, p.stat().st_mtime)
    return newest


def is_stale(output: Path, sources: Sequence[Path]) -> bool:
    """True when `output` is missing or older than any of `sources` (files or directories)."""
    return not output.exists() or output.stat().st_mtime < newest_mtime(sources)


def build(
    args: Sequence[str], cwd: Path, *, timeout: float = 900, env: dict[str, str] | None = None
) -> float:
    """Run a build command; fail the test with its output when it fails. Returns the seconds it took."""
    started = time.monotonic()
    r = subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if r.returncode != 0:
        pytest.fail(
            f"build failed: {' '.join(args)} (exit {r.returncode})\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        )
    return time.monotonic() - started


def run_program(args: Sequence[str], cwd: Path, endpoint: Any, *, timeout: float = 240) -> ProgramRun:
    env = {**os.environ, **endpoint.env()}
    started = time.monotonic()
    r = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    results: dict[str, dict[str, Any]] = {}
    for line in r.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        results[obj["check"]] = obj
    return ProgramRun(r.returncode, results, r.stdout, r.stderr, run_seconds=time.monotonic() - started)


def assert_check(run: ProgramRun, check: str) -> None:
    assert check in run.results, f"the program did not report {check!r}\n{run.explain()}"
    res = run.results[check]
    assert res["ok"] is True, f"{check} failed: {res.get('detail')}\n{run.explain()}"


def assert_clean_exit(run: ProgramRun) -> None:
    built = "cached" if run.build_seconds is None else f"{run.build_seconds:.1f} s"
    print(f"build: {built}; run: {run.run_seconds:.2f} s")
    failed = [name for name, r in run.results.items() if not r.get("ok")]
    assert run.returncode == 0 and not failed, f"failed checks: {failed}\n{run.explain()}"
    missing = [c for c in CHECKS if c not in run.results]
    assert not missing, f"checks not reported: {missing}\n{run.explain()}"
