#!/usr/bin/env python3
"""Open 1,000 concurrent idle sessions through pgward; check each works; report pgward's memory.

    bench/idle_sessions.py --demo-json .state/demo/demo.json [--sessions 1000] [--pgward-pid PID]

asyncpg connects (TLS verify-full, the `ci` identity), at most --concurrency handshakes at a time,
runs `select 1` on every session, holds them all open for --hold seconds, then closes them. Each
gateway session holds one upstream connection, so the target needs max_connections above the session
count: the script reads it first (through target_dsn) and stops with a clear message when it is too low.
Reports RSS of the pgward process before, with all sessions open (total and per session), and after.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import sys
import time
from pathlib import Path

import asyncpg
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_demo, pgward_conninfo, pid_listening_on, proc_status_kib


async def run(a: argparse.Namespace) -> int:
    demo = load_demo(a.demo_json)
    info = pgward_conninfo(demo, a.identity)
    pid = a.pgward_pid or pid_listening_on(info["port"])
    if pid is None:
        print(f"no process listens on port {info['port']}: is the demo running?", file=sys.stderr)
        return 2
    with psycopg.connect(demo["target_dsn"], autocommit=True) as conn:
        row = conn.execute(
            "select current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int - count(*) from pg_stat_activity"
            " where backend_type = 'client backend'"
        ).fetchone()
        available = int(row[0]) if row else 0
    if available < a.sessions:
        print(
            f"the target accepts only {available} more client connections, fewer than {a.sessions}: "
            "raise its max_connections (ALTER SYSTEM SET max_connections = ..., restart) or lower --sessions",
            file=sys.stderr,
        )
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * a.sessions + 256)), hard))

    ctx = ssl.create_default_context(cafile=info["sslrootcert"])
    sem = asyncio.Semaphore(a.concurrency)
    rss_before = proc_status_kib(pid, "VmRSS")

    async def open_one(i: int) -> asyncpg.Connection:
        async with sem:
            c = await asyncpg.connect(
                host=info["host"],
                port=info["port"],
                database=info["dbname"],
                user=info["user"],
                password=info["password"],
                ssl=ctx,
                timeout=60,
                statement_cache_size=0,
            )
            assert await c.fetchval("select $1::int", i) == i
            return c

    started = time.monotonic()
    results = await asyncio.gather(*(open_one(i) for i in range(a.sessions)), return_exceptions=True)
    opened = [r for r in results if isinstance(r, asyncpg.Connection)]
    errors = [r for r in results if not isinstance(r, asyncpg.Connection)]
    t_open = time.monotonic() - started
    await asyncio.sleep(a.hold)
    rss_open = proc_status_kib(pid, "VmRSS")
    # Every session still answers after being idle.
    checks = await asyncio.gather(*(c.fetchval("select 1") for c in opened), return_exceptions=True)
    alive = sum(1 for v in checks if v == 1)
    await asyncio.gather(*(c.close(timeout=30) for c in opened), return_exceptions=True)
    await asyncio.sleep(2)
    rss_after = proc_status_kib(pid, "VmRSS")

    print(
        f"sessions: {len(opened)}/{a.sessions} opened in {t_open:.1f} s, "
        f"{alive} answered after {a.hold} s idle"
    )
    if errors:
        kinds = {f"{type(e).__name__}: {e}" for e in errors}
        print(f"errors ({len(errors)}): " + "; ".join(sorted(kinds)[:5]))
    per = (rss_open - rss_before) / max(len(opened), 1)
    print(
        f"pgward RSS: before {rss_before / 1024:.1f} MiB, with sessions open {rss_open / 1024:.1f} MiB "
        f"({per:.0f} KiB per session), after closing {rss_after / 1024:.1f} MiB"
    )
    return 0 if len(opened) == alive == a.sessions else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-json", type=Path, required=True)
    ap.add_argument("--identity", default="ci")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50, help="handshakes in flight at once")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to keep all sessions idle")
    ap.add_argument("--pgward-pid", type=int)
    a = ap.parse_args()
    return asyncio.run(asyncio.wait_for(run(a), 600))


if __name__ == "__main__":
    sys.exit(main())
