#!/usr/bin/env python3
"""COPY … TO STDOUT of a 1,000,000-row, 8-column table with 3 masked columns: through pgward vs directly.

    bench/masked_copy.py --demo-json .state/demo/demo.json [--rows 1000000]

Uses the table and policy of bench/masked_result.py (`shop.bench_people`, `bench-masking`), then runs
`COPY shop.bench_people TO STDOUT` in the text, CSV and binary formats directly (the target's
superuser), through pgward as `alice` (masked: the data plane rewrites every row) and as `bob`
(exempt: relayed unchanged), and reports wall times, ratios and the pgward process's RSS.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_demo, pgward_conninfo, pid_listening_on, proc_status_kib, with_database
from masked_result import POLICY, TABLE, prepare, wait_until_visible

FORMATS = {"text": "", "csv": " (format csv)", "binary": " (format binary)"}


def copy_out(conninfo: Any, options: str) -> tuple[float, int]:
    kwargs = conninfo if isinstance(conninfo, dict) else {"conninfo": conninfo}
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        started = time.monotonic()
        size = 0
        with conn.cursor() as cur, cur.copy(f"copy {TABLE} to stdout{options}") as copy:
            for block in copy:
                size += len(block)
        return time.monotonic() - started, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-json", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pgward-pid", type=int)
    args = ap.parse_args()
    demo = load_demo(args.demo_json)
    superuser = with_database(demo["target_dsn"], "shop")
    prepare(superuser, args.rows)
    r = httpx.put(
        f"{demo['api_url'].rstrip('/')}/v1/policies/{POLICY['name']}",
        json=POLICY,
        headers={"Authorization": f"Bearer {demo['admin_token']}"},
        timeout=30,
    )
    if r.status_code not in (200, 201):
        raise SystemExit(f"could not apply the bench policy: {r.status_code} {r.text}")
    alice, bob = pgward_conninfo(demo, "alice"), pgward_conninfo(demo, "bob")
    wait_until_visible(alice)
    with psycopg.connect(**alice, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"copy (select email from {TABLE} limit 1) to stdout") as copy:
            first = b"".join(bytes(b) for b in copy)
    assert first.startswith(b"****@"), f"not masked: {first!r}"

    pid = args.pgward_pid or pid_listening_on(int(demo["proxy"]["port"]))
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set() and pid:
            peak[0] = max(peak[0], proc_status_kib(pid, "VmRSS"))
            time.sleep(0.05)

    before = proc_status_kib(pid, "VmRSS") if pid else 0
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    copy_out(superuser, "")  # warm the target's buffers
    for name, options in FORMATS.items():
        direct_s, direct_b = copy_out(superuser, options)
        masked_s, masked_b = copy_out(alice, options)
        clear_s, _ = copy_out(bob, options)
        print(
            f"{name:6}: direct {direct_s:.2f} s ({direct_b / 2**20:.0f} MiB), "
            f"pgward masked {masked_s:.2f} s ({masked_s / direct_s:.2f}x, {masked_b / 2**20:.0f} MiB), "
            f"pgward unmasked {clear_s:.2f} s ({clear_s / direct_s:.2f}x)"
        )
    stop.set()
    sampler.join()
    if pid:
        print(
            f"pgward RSS: before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
            f"(+{(peak[0] - before) / 1024:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
