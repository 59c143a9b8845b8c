#!/usr/bin/env python3
"""A 1,000,000-row, 8-column SELECT with 3 masked columns: through pgward vs directly.

    bench/masked_result.py --demo-json .state/demo/demo.json [--rows 1000000]

Creates `shop.bench_people` on the demo target (once), applies a policy `bench-masking` through the
API that masks its email, phone and ssn columns for the analysts group, then streams
`select * from shop.bench_people` directly (the target's superuser), through pgward as `alice`
(masked) and as `bob` (exempt: the unmasked-through-pgward figure), and reports wall times, the
ratios, and the pgward process's RSS.
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

TABLE = "shop.bench_people"
POLICY = {
    "kind": "Policy",
    "name": "bench-masking",
    "description": "bench/masked_result.py: masks three columns of shop.bench_people for analysts",
    "subjects": {"groups": ["analysts"]},
    "connections": ["shop"],
    "rules": [{"name": "read-bench", "allow": ["read"], "tables": [TABLE]}],
    "masking": [
        {"name": "bench-email", "columns": [f"{TABLE}.email"], "function": "email"},
        {"name": "bench-phone", "columns": [f"{TABLE}.phone"], "function": "partial", "first": 0, "last": 4},
        {"name": "bench-ssn", "columns": [f"{TABLE}.ssn"], "function": "hash"},
    ],
}


def prepare(superuser_dsn: str, rows: int) -> None:
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        have = conn.execute("select to_regclass(%s)", (TABLE,)).fetchone()
        if have and have[0] is not None:
            count = conn.execute(f"select count(*) from {TABLE}").fetchone()
            if count and count[0] == rows:
                return
            conn.execute(f"drop table {TABLE}")
        conn.execute(
            f"create table {TABLE} (id int primary key, name text, email text, phone text, ssn text,"
            " created_at timestamptz, amount numeric(10,2), note text)"
        )
        conn.execute(
            f"insert into {TABLE} select g, 'Person ' || g, 'person' || g || '@example.com',"
            " '(555) 555-' || lpad((g %% 10000)::text, 4, '0'), lpad((g %% 1000)::text, 3, '0') || '-'"
            " || lpad((g %% 100)::text, 2, '0') || '-' || lpad((g %% 10000)::text, 4, '0'),"
            " now() - g * interval '1 minute', (g %% 100000) / 100.0, md5(g::text)"
            " from generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(f"grant select on {TABLE} to shop_reader")
        conn.execute(f"analyze {TABLE}")


def stream(conninfo: Any) -> tuple[float, int]:
    kwargs = conninfo if isinstance(conninfo, dict) else {"conninfo": conninfo}
    started = time.monotonic()
    n = 0
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        for _ in conn.cursor().stream(f"select * from {TABLE}", size=1000):
            n += 1
    return time.monotonic() - started, n


def wait_until_visible(conninfo: dict[str, Any], timeout: float = 90) -> None:
    """The gateway's catalog snapshot is refreshed within its TTL (60 s) of a table created outside it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(**conninfo, autocommit=True) as conn:
                conn.execute(f"select email from {TABLE} limit 1").fetchall()
                return
        except psycopg.Error as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"pgward does not let alice read {TABLE}: {e}") from e
            time.sleep(3)


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
    with psycopg.connect(**alice) as conn:
        first = conn.execute(f"select email, phone, ssn from {TABLE} order by id limit 1").fetchone()
    assert first is not None and first[0].startswith("****@"), f"not masked: {first}"

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
    stream(superuser)  # warm the target's buffers so the first timed run is not the cold one
    direct_s, n_direct = stream(superuser)
    masked_s, n_masked = stream(alice)
    clear_s, n_clear = stream(bob)
    stop.set()
    sampler.join()
    print(f"rows: {n_direct} direct, {n_masked} masked through pgward, {n_clear} unmasked through pgward")
    print(
        f"wall time: direct {direct_s:.2f} s, pgward masked {masked_s:.2f} s ({masked_s / direct_s:.2f}x), "
        f"pgward unmasked {clear_s:.2f} s ({clear_s / direct_s:.2f}x)"
    )
    if pid:
        print(
            f"pgward RSS: before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
            f"(+{(peak[0] - before) / 1024:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
