#!/usr/bin/env python3
"""What strict masking costs: a WHERE on an indexed masked column, strict vs ordinary masking.

    bench/strict_predicate.py --demo-json .state/demo/demo.json [--rows 200000] [--queries 200]

Creates `shop.bench_strict` on the demo target (once; `email` has an index), applies two policies
through the API that mask its `email` with the `email` function: `bench-strict` (strict) for the
analysts group (alice) and `bench-plain` (ordinary masking) for the approvers group (carol). Then runs
the same parameterised statements directly (the target's superuser), through pgward as carol and as
alice, and reports the mean latency of each:

- `where email = $1` (a real address): an index scan directly and with ordinary masking (one row), a
  scan that computes the mask of every row with strict masking (no row: masked values never equal a
  real address);
- `where id = $1`: the primary key is used in every case (the sub-select is pulled up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_demo, pgward_conninfo, with_database

TABLE = "shop.bench_strict"
RULES = [{"name": "read-bench", "allow": ["read"], "tables": [TABLE]}]
POLICIES = [
    {
        "kind": "Policy",
        "name": "bench-strict",
        "description": "bench/strict_predicate.py: email of shop.bench_strict masked strictly for analysts",
        "subjects": {"groups": ["analysts"]},
        "connections": ["shop"],
        "rules": RULES,
        "masking": [{"columns": [f"{TABLE}.email"], "function": "email", "strict": True}],
    },
    {
        "kind": "Policy",
        "name": "bench-plain",
        "description": "bench/strict_predicate.py: email of shop.bench_strict masked for approvers",
        "subjects": {"groups": ["approvers"]},
        "connections": ["shop"],
        "rules": RULES,
        "masking": [{"columns": [f"{TABLE}.email"], "function": "email"}],
    },
]


def prepare(superuser_dsn: str, rows: int) -> None:
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        have = conn.execute("select to_regclass(%s)", (TABLE,)).fetchone()
        if have and have[0] is not None:
            count = conn.execute(f"select count(*) from {TABLE}").fetchone()
            if count and count[0] == rows:
                return
            conn.execute(f"drop table {TABLE}")
        conn.execute(f"create table {TABLE} (id int primary key, name text, email text, note text)")
        conn.execute(
            f"insert into {TABLE} select g, 'Person ' || g, 'person' || g || '@example.com', md5(g::text)"
            " from generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(f"create index on {TABLE} (email)")
        conn.execute(f"grant select on {TABLE} to public")
        conn.execute(f"analyze {TABLE}")


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
                raise SystemExit(f"pgward does not let {conninfo['user']} read {TABLE}: {e}") from e
            time.sleep(3)


def latency(conninfo: Any, sql: str, params: list[list[Any]]) -> tuple[float, list[Any]]:
    """Mean seconds per execution of `sql` over `params` (prepared, after one warm-up run)."""
    kwargs = conninfo if isinstance(conninfo, dict) else {"conninfo": conninfo}
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        conn.execute(sql, params[0], prepare=True).fetchall()
        times: list[float] = []
        results: list[Any] = []
        for p in params:
            started = time.perf_counter()
            row = conn.execute(sql, p, prepare=True).fetchone()
            times.append(time.perf_counter() - started)
            results.append(row[0] if row else None)
    return statistics.mean(times), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-json", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    demo = load_demo(args.demo_json)
    superuser = with_database(demo["target_dsn"], "shop")
    prepare(superuser, args.rows)
    for policy in POLICIES:
        r = httpx.put(
            f"{demo['api_url'].rstrip('/')}/v1/policies/{policy['name']}",
            json=policy,
            headers={"Authorization": f"Bearer {demo['admin_token']}"},
            timeout=30,
        )
        if r.status_code not in (200, 201):
            raise SystemExit(f"could not apply {policy['name']}: {r.status_code} {r.text}")
    strict, plain = pgward_conninfo(demo, "alice"), pgward_conninfo(demo, "carol")
    wait_until_visible(strict)
    wait_until_visible(plain)

    step = max(1, args.rows // args.queries)
    ids = [[i] for i in range(1, args.rows + 1, step)][: args.queries]
    emails = [[f"person{i[0]}@example.com"] for i in ids]
    by_email = f"select count(*) from {TABLE} where email = %s"
    by_id = f"select email from {TABLE} where id = %s"
    print(f"{args.rows} rows, {len(ids)} executions each, prepared statements; mean latency:")
    for label, sql, params in (("where email = $1", by_email, emails), ("where id = $1", by_id, ids)):
        direct, d_rows = latency(superuser, sql, params)
        masked, m_rows = latency(plain, sql, params)
        strict_s, s_rows = latency(strict, sql, params)
        print(
            f"  {label}: direct {direct * 1e3:.2f} ms, pgward masked {masked * 1e3:.2f} ms, "
            f"pgward strict {strict_s * 1e3:.2f} ms ({strict_s / masked:.1f}x masked)"
        )
        if sql is by_email:
            print(
                f"    rows found: direct {sum(d_rows)}, masked {sum(m_rows)}, strict {sum(s_rows)} "
                "(strict: predicates see masked values)"
            )
        else:
            assert all(str(v).startswith("****@") for v in m_rows + s_rows), "not masked"


if __name__ == "__main__":
    main()
