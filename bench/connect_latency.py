#!/usr/bin/env python3
"""Connection set-up time through pgward with an OIDC JWT vs a direct TLS + SCRAM connection.

    .venv/bin/python bench/connect_latency.py [-n 200]

Starts, on loopback only: a TLS target with the machine's PostgreSQL (the embedded one has no
OpenSSL) holding the shop data, an embedded metadata store, the development OIDC issuer (ES256,
HTTPS) and a real `pgward serve` trusting it, with the connection `shop` reaching the target over
TLS (verify-full) with SCRAM. Then N sequential psycopg connects (each a full connect + `SELECT 1`
+ close) directly to the target (TLS verify-full, SCRAM-SHA-256) and N through the gateway with the
JWT as the password. Prints p50/p95 of each, the ratio (target <= 1.5x) and how many times the gateway
fetched the JWKS (must be 1: it is cached, never fetched per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from control_plane.demo.certs import ensure_certs  # noqa: E402
from control_plane.demo.shop import load_shop  # noqa: E402
from control_plane.identity.dev_issuer import DevIdentity, DevIssuer  # noqa: E402
from control_plane.pgserver import LocalPostgres  # noqa: E402
from tests.fixtures.gateway import start_gateway, stop_gateway  # noqa: E402
from tests.fixtures.postgres import TargetDatabase  # noqa: E402

AUDIENCE = "pgward-bench"


def _time_connects(n: int, connect: object) -> list[float]:
    assert callable(connect)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        with connect() as conn:
            conn.execute("SELECT 1").fetchone()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def _run_issuer(issuer: DevIssuer, ready: threading.Event, stop: threading.Event) -> None:
    async def main() -> None:
        await issuer.start()
        ready.set()
        # `stop` is a threading.Event set from the main thread; wait for it off the event loop.
        await asyncio.to_thread(stop.wait)
        await issuer.stop()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    bin_dir = LocalPostgres.system_bin_dir()
    if bin_dir is None or not LocalPostgres.binaries_support_ssl(bin_dir):
        sys.exit("needs the machine's PostgreSQL server binaries built with OpenSSL (a TLS target)")
    base = Path(tempfile.mkdtemp(prefix="pgward-bench-"))
    base.chmod(0o755)
    target = LocalPostgres(base / "target", bin_dir=bin_dir, ssl=True, durable=False).start()
    store = LocalPostgres(base / "store", durable=False).start()
    stop = threading.Event()
    gw = None
    try:
        db = TargetDatabase(target, load_shop(target.dsn()))
        tls = ensure_certs(base / "tls")
        issuer = DevIssuer(
            base / "issuer", {"alice": DevIdentity("alice", "alice", ("analysts",))},
            audience=AUDIENCE, tls_cert=tls.server_cert, tls_key=tls.server_key,
        )  # fmt: skip
        ready = threading.Event()
        threading.Thread(target=_run_issuer, args=(issuer, ready, stop), daemon=True).start()
        assert ready.wait(30)
        issuers = [{"issuer": issuer.issuer, "audience": AUDIENCE, "ca_file": str(tls.ca_cert)}]
        gw = start_gateway(
            base / "gateway", store, db, ci_policy=False,
            PGWARD_OIDC_ISSUERS=json.dumps(issuers), PGWARD_LOG_LEVEL="warning",
        )  # fmt: skip
        assert target.ca_cert is not None
        gw.put_connection(
            "shop", host="127.0.0.1", port=target.port, database=db.database, username=db.shop.role,
            password=db.shop.password, tls_mode="verify-full", sslrootcert=target.ca_cert.read_text(),
        )  # fmt: skip
        gw.put_policy({
            "kind": "Policy", "name": "bench-alice", "subjects": {"users": ["alice"]},
            "connections": ["shop"], "rules": [{"allow": ["all"]}],
        })  # fmt: skip
        token = issuer.mint("alice")

        def direct() -> psycopg.Connection[tuple[object, ...]]:
            return psycopg.connect(
                host="127.0.0.1", port=target.port, dbname=db.database, user=db.shop.role,
                password=db.shop.password, sslmode="verify-full", sslrootcert=str(target.ca_cert),
            )  # fmt: skip

        def through() -> psycopg.Connection[tuple[object, ...]]:
            return psycopg.connect(gw.conninfo(user="alice"), password=token)

        with direct() as conn:
            ssl_info = conn.execute(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        # LocalPostgres's pg_hba asks every TCP client for scram-sha-256.
        print(f"direct connection: (ssl, version) = {ssl_info}, authentication scram-sha-256")
        _time_connects(args.warmup, direct)
        _time_connects(args.warmup, through)
        d = _time_connects(args.n, direct)
        g = _time_connects(args.n, through)
        fetches = gw.log().count("fetched JWKS")
        result = {
            "n": args.n,
            "direct_tls_scram_ms": {"p50": round(_p(d, 50), 3), "p95": round(_p(d, 95), 3)},
            "pgward_jwt_ms": {"p50": round(_p(g, 50), 3), "p95": round(_p(g, 95), 3)},
            "ratio_p50": round(_p(g, 50) / _p(d, 50), 3),
            "ratio_p95": round(_p(g, 95) / _p(d, 95), 3),
            "jwks_fetches": fetches,
            "target_postgres": target.version(),
        }
        print(json.dumps(result, indent=2))
        print(f"ratio p50 {result['ratio_p50']}x (target <= 1.5x); JWKS fetched {fetches}x (must be 1)")
    finally:
        stop.set()
        if gw is not None:
            stop_gateway(gw)
        target.stop()
        store.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
