#!/usr/bin/env python3
"""Stream a 1,000,000-row result through pgward and directly; wall time and pgward's memory.

    bench/big_result.py --demo-json .state/demo/demo.json [--rows 1000000] [--pgward-pid PID]

The query `select g, md5(g::text) from generate_series(1, N) g` (~45 MB of DataRows) is read with
psycopg's streaming (`cursor.stream`, chunks of 1,000 rows; single-row mode with older libpq), so the
client holds little and the gateway must pass rows on with bounded buffers. Reports wall time via
pgward and directly (the demo's target_dsn), and pgward's RSS before, the highest RSS sampled every
50 ms during the stream, and VmHWM (the process's lifetime peak) after.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_demo, pgward_conninfo, pid_listening_on, proc_status_kib, with_database

QUERY = "select g, md5(g::text) from generate_series(1, %s) g"


def stream_rows(conninfo: Any, rows: int, timeout: float) -> tuple[float, int, int]:
    kwargs = conninfo if isinstance(conninfo, dict) else {"conninfo": conninfo}
    started = time.monotonic()
    n = 0
    total_len = 0
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        conn.execute(f"set statement_timeout = {int(timeout * 1000)}")
        cur = conn.cursor()
        try:
            gen = cur.stream(QUERY, (rows,), size=1000)
        except TypeError:  # psycopg < 3.2: single-row mode only
            gen = cur.stream(QUERY, (rows,))
        for _g, md5 in gen:
            n += 1
            total_len += len(md5)
    return time.monotonic() - started, n, total_len


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-json", type=Path, required=True)
    ap.add_argument("--identity", default="ci")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pgward-pid", type=int)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    demo = load_demo(a.demo_json)
    via = pgward_conninfo(demo, a.identity)
    direct = with_database(demo["target_dsn"], demo["connection"])
    pid = a.pgward_pid or pid_listening_on(via["port"])
    if pid is None:
        print(f"no process listens on port {via['port']}: is the demo running?", file=sys.stderr)
        return 2

    t_direct, n_direct, _ = stream_rows(direct, a.rows, a.timeout)
    rss_before = proc_status_kib(pid, "VmRSS")
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], proc_status_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        t_pgward, n_pgward, _ = stream_rows(via, a.rows, a.timeout)
    finally:
        stop.set()
        sampler.join()
    hwm = proc_status_kib(pid, "VmHWM")
    ok = n_direct == n_pgward == a.rows
    print(f"rows: {a.rows} (direct {n_direct}, pgward {n_pgward}){'' if ok else '  MISMATCH'}")
    print(f"wall time: direct {t_direct:.2f} s, pgward {t_pgward:.2f} s ({t_pgward / t_direct:.2f}x)")
    print(
        f"pgward RSS: before {rss_before / 1024:.1f} MiB, peak during {peak[0] / 1024:.1f} MiB "
        f"(+{(peak[0] - rss_before) / 1024:.1f} MiB), VmHWM {hwm / 1024:.1f} MiB"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
