#!/usr/bin/env python3
"""pgbench -S through pgward against direct connections and PgBouncer (run by `make bench`).

    bench/pgbench_compare.py --demo-json .state/demo/demo.json          # everything, DURATION=20 s each
    bench/pgbench_compare.py --target-dsn postgresql://postgres:pw@127.0.0.1:5432/postgres \
        --target-sslrootcert ca.crt                                     # direct + PgBouncer only

Set-up (directly on the target, as the superuser of `target_dsn`): `pgbench -i -s SCALE` in the
database of the demo connection, a role `pgward_bench` (random password) for the direct and PgBouncer
runs, and SELECT on the pgbench tables for it and for the demo's connection role (`shop_owner`).

Then, for each endpoint and query mode (`-M simple`, `-M prepared`), `pgbench -n -S -c 8 -j 2 -T
DURATION` against:
  direct-plain  the target over TCP without TLS
  direct-tls    the target over TLS (verify-full), when the target serves TLS
  pgbouncer     PgBouncer (session pooling, client TLS required, the same certificates as pgward)
  pgward        the gateway (TLS verify-full) as the demo's `ci` service identity
printing TPS, average latency and the proxy's CPU time per transaction (utime+stime of the proxy
process from /proc/PID/stat), and the ratios pgward/PgBouncer and pgward/direct. Then one client
(`-c 1 -j 1 -M prepared -T LATENCY_DURATION --log`) per endpoint, giving p50/p99 of the per-transaction
latencies and pgward's added p50 over direct TLS (over direct plaintext when the target has no TLS).

Everything runs on loopback, each pgbench run is bounded by -T plus a timeout. Results also go to
bench/results/pgbench-<timestamp>.json (ignored by git).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import cpu_seconds, pid_listening_on, with_database  # noqa: E402

PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
BENCH_ROLE = "pgward_bench"


# ------------------------------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Endpoint:
    name: str
    env: dict[str, str]
    proxy_pid: int | None = None  # whose CPU time we charge per transaction
    note: str = ""


@dataclass
class Result:
    endpoint: str
    mode: str
    clients: int
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    proxy_cpu_us_per_tx: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def pgbench(
    endpoint: Endpoint,
    *args: str,
    duration: int,
    cwd: Path | None = None,
) -> tuple[str, float | None]:
    """Run pgbench; returns its stdout and the proxy CPU seconds it cost."""
    cmd = ["pgbench", "-n", *args, "-T", str(duration)]
    before = cpu_seconds(endpoint.proxy_pid) if endpoint.proxy_pid else None
    r = subprocess.run(
        cmd,
        env={**os.environ, **endpoint.env},
        capture_output=True,
        text=True,
        timeout=duration + 120,
        cwd=cwd,
    )
    cpu = cpu_seconds(endpoint.proxy_pid) - before if endpoint.proxy_pid and before is not None else None
    if r.returncode != 0:
        raise RuntimeError(
            f"pgbench against {endpoint.name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        )
    return r.stdout, cpu


def parse_pgbench(out: str) -> tuple[float, float, int, int]:
    tps = float(re.search(r"^tps = ([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"^latency average = ([\d.]+) ms", out, re.M).group(1))  # type: ignore[union-attr]
    tx = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"number of failed transactions: (\d+)", out)
    return tps, lat, tx, int(m.group(1)) if m else 0


# ------------------------------------------------------------------------------------------ set-up


def psql_super(dsn: str, sql: str) -> str:
    r = subprocess.run(
        ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise RuntimeError(f"psql failed: {r.stderr}")
    return r.stdout.strip()


def init_target(super_dsn: str, scale: int, grant_to: list[str], skip_init: bool) -> str:
    """pgbench -i on the target; returns the password of the bench role."""
    if not skip_init:
        log(f"initialising pgbench tables (scale {scale}) on the target ...")
        r = subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale), super_dsn], capture_output=True, text=True, timeout=900
        )
        if r.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{r.stderr}")
    password = secrets.token_urlsafe(18)
    exists = psql_super(super_dsn, f"select 1 from pg_roles where rolname = '{BENCH_ROLE}'")
    verb = "ALTER" if exists else "CREATE"
    psql_super(super_dsn, f"{verb} ROLE {BENCH_ROLE} LOGIN PASSWORD '{password}'")
    roles = ", ".join([BENCH_ROLE, *grant_to])
    tables = ", ".join(PGBENCH_TABLES)
    psql_super(super_dsn, f"GRANT SELECT, INSERT, UPDATE ON {tables} TO {roles}")
    return password


@contextlib.contextmanager
def run_pgbouncer(
    workdir: Path, target_host: str, target_port: int, database: str, password: str, cert: Path, key: Path
) -> Iterator[tuple[int, int]]:
    """PgBouncer in session mode with client TLS required; yields (port, pid)."""
    if shutil.which("pgbouncer") is None:
        log("pgbouncer is missing: installing the Debian package ...")
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"],
            check=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    pdir = workdir / "pgbouncer"
    pdir.mkdir()
    shutil.copy(cert, pdir / "server.crt")
    shutil.copy(key, pdir / "server.key")
    port = free_port()
    (pdir / "userlist.txt").write_text(f'"{BENCH_ROLE}" "{password}"\n')
    (pdir / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host={target_host} port={target_port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {pdir}/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
client_tls_sslmode = require
client_tls_cert_file = {pdir}/server.crt
client_tls_key_file = {pdir}/server.key
logfile = {pdir}/pgbouncer.log
pidfile = {pdir}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
"""
    )
    cmd = [exe, str(pdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: run it as the unprivileged user pgward's PostgreSQL uses.
        user = next((u for u in ("pgward", "postgres", "nobody") if _has_user(u)), "nobody")
        ent = pwd.getpwnam(user)
        for p in [workdir, pdir, *pdir.iterdir()]:
            os.chown(p, ent.pw_uid, ent.pw_gid)
        (pdir / "server.key").chmod(0o600)
        cmd = ["setpriv", f"--reuid={ent.pw_uid}", f"--regid={ent.pw_gid}", "--clear-groups", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while pid_listening_on(port) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                logtxt = (pdir / "pgbouncer.log").read_text() if (pdir / "pgbouncer.log").exists() else ""
                raise RuntimeError(f"pgbouncer did not start:\n{err}\n{logtxt}")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def target_serves_tls(host: str, port: int, password: str, database: str, ca: Path | None) -> bool:
    if ca is None:
        return False
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca)}
    r = subprocess.run(
        [
            "psql",
            "-X",
            "-qAt",
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            BENCH_ROLE,
            "-d",
            database,
            "-c",
            "select 1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode == 0


# ------------------------------------------------------------------------------------------ runs


def throughput(ep: Endpoint, mode: str, clients: int, threads: int, duration: int) -> Result:
    out, cpu = pgbench(ep, "-S", "-M", mode, "-c", str(clients), "-j", str(threads), duration=duration)
    tps, lat, tx, failed = parse_pgbench(out)
    per_tx = cpu / tx * 1e6 if cpu is not None and tx else None
    return Result(ep.name, mode, clients, tps, lat, tx, failed, proxy_cpu_us_per_tx=per_tx)


def latency(ep: Endpoint, duration: int, workdir: Path) -> Result:
    d = Path(tempfile.mkdtemp(prefix=f"lat-{ep.name}-", dir=workdir))
    out, cpu = pgbench(
        ep, "-S", "-M", "prepared", "-c", "1", "-j", "1", "--log", "--log-prefix=tx", duration=duration, cwd=d
    )
    tps, lat, tx, failed = parse_pgbench(out)
    lats_us: list[int] = []
    for f in d.glob("tx*"):
        for line in f.read_text().splitlines():
            cols = line.split()
            if len(cols) >= 3:
                lats_us.append(int(cols[2]))  # client_id transaction_no time(µs) script_no epoch epoch_us
    lats_us.sort()
    p50 = statistics.median(lats_us) / 1000 if lats_us else None
    p99 = lats_us[int(len(lats_us) * 0.99) - 1] / 1000 if lats_us else None
    per_tx = cpu / tx * 1e6 if cpu is not None and tx else None
    return Result(ep.name, "prepared", 1, tps, lat, tx, failed, per_tx, p50, p99)


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-json", type=Path, help="demo.json of a running `pgward demo`")
    ap.add_argument(
        "--target-dsn", help="superuser libpq URI of the target (instead of, or overriding, demo.json)"
    )
    ap.add_argument("--target-sslrootcert", type=Path, help="CA of the target's TLS certificate (direct-tls)")
    ap.add_argument("--database", help="database for pgbench (default: the demo connection's, or 'shop')")
    ap.add_argument("--identity", default="ci", help="demo identity that connects through pgward")
    ap.add_argument("--pgward-pid", type=int, help="pid of the pgward process (default: found by its port)")
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", "20")))
    ap.add_argument("--latency-duration", type=int, default=int(os.environ.get("LATENCY_DURATION", "10")))
    ap.add_argument("--scale", type=int, default=int(os.environ.get("SCALE", "10")))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("--endpoints", default="direct-plain,direct-tls,pgbouncer,pgward")
    ap.add_argument("--skip-init", action="store_true", help="the pgbench tables exist already")
    ap.add_argument("--json-out", type=Path, help="default: bench/results/pgbench-<timestamp>.json")
    a = ap.parse_args()

    demo = json.loads(a.demo_json.read_text()) if a.demo_json else None
    if a.target_dsn is None and demo is None:
        ap.error("give --demo-json or --target-dsn")
    super_dsn_any = a.target_dsn or demo["target_dsn"]  # type: ignore[index]
    database = a.database or (demo.get("connection") if demo else None) or "shop"
    super_dsn = with_database(super_dsn_any, database)
    parts = urlsplit(super_dsn)
    thost, tport = parts.hostname or "127.0.0.1", parts.port or 5432
    wanted = set(a.endpoints.split(","))
    modes = a.modes.split(",")

    workdir = Path(tempfile.mkdtemp(prefix="pgward-bench-"))
    workdir.chmod(0o755)
    try:
        grant_to = []
        if demo:
            role = psql_super(super_dsn, "select 'shop_owner' from pg_roles where rolname = 'shop_owner'")
            grant_to = [role] if role else []
        bench_pw = init_target(super_dsn, a.scale, grant_to, a.skip_init)

        base = {"PGHOST": thost, "PGPORT": str(tport), "PGDATABASE": database, "PGUSER": BENCH_ROLE}
        endpoints: list[Endpoint] = []
        skipped: dict[str, str] = {}
        if "direct-plain" in wanted:
            endpoints.append(
                Endpoint("direct-plain", {**base, "PGPASSWORD": bench_pw, "PGSSLMODE": "disable"})
            )
        if "direct-tls" in wanted:
            if target_serves_tls(thost, tport, bench_pw, database, a.target_sslrootcert):
                endpoints.append(
                    Endpoint(
                        "direct-tls",
                        {
                            **base,
                            "PGPASSWORD": bench_pw,
                            "PGSSLMODE": "verify-full",
                            "PGSSLROOTCERT": str(a.target_sslrootcert),
                        },
                    )
                )
            else:
                skipped["direct-tls"] = "the target does not serve TLS (or no --target-sslrootcert)"

        # Certificates for PgBouncer's client side: the demo's (next to its CA), else a fresh private CA.
        if demo and (Path(demo["proxy"]["sslrootcert"]).parent / "server.key").exists():
            tls_dir = Path(demo["proxy"]["sslrootcert"]).parent
            ca, cert, key = tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key"
            ca = Path(demo["proxy"]["sslrootcert"])
        else:
            from control_plane.demo.certs import ensure_certs

            files = ensure_certs(workdir / "tls")
            ca, cert, key = files.ca_cert, files.server_cert, files.server_key

        with contextlib.ExitStack() as stack:
            if "pgbouncer" in wanted:
                bport, bpid = stack.enter_context(
                    run_pgbouncer(workdir, thost, tport, database, bench_pw, cert, key)
                )
                endpoints.append(
                    Endpoint(
                        "pgbouncer",
                        {
                            **base,
                            "PGPORT": str(bport),
                            "PGPASSWORD": bench_pw,
                            "PGSSLMODE": "verify-full",
                            "PGSSLROOTCERT": str(ca),
                        },
                        proxy_pid=bpid,
                    )
                )
            if "pgward" in wanted:
                if demo is None:
                    skipped["pgward"] = "no --demo-json"
                else:
                    px = demo["proxy"]
                    ident = demo["identities"][a.identity]
                    pid = a.pgward_pid or pid_listening_on(int(px["port"]))
                    if pid is None:
                        log(f"warning: no process listens on {px['port']}; pgward CPU is not measured")
                    endpoints.append(
                        Endpoint(
                            "pgward",
                            {
                                "PGHOST": px["host"],
                                "PGPORT": str(px["port"]),
                                "PGDATABASE": demo["connection"],
                                "PGUSER": ident["user"],
                                "PGPASSWORD": ident["token"],
                                "PGSSLMODE": "verify-full",
                                "PGSSLROOTCERT": px["sslrootcert"],
                            },
                            proxy_pid=pid,
                        )
                    )

            results: list[Result] = []
            for mode in modes:
                for ep in endpoints:
                    log(f"pgbench -S -M {mode} -c {a.clients} -j {a.threads} -T {a.duration}: {ep.name} ...")
                    results.append(throughput(ep, mode, a.clients, a.threads, a.duration))
            lat_results: list[Result] = []
            for ep in endpoints:
                log(f"latency, 1 client, -M prepared -T {a.latency_duration}: {ep.name} ...")
                lat_results.append(latency(ep, a.latency_duration, workdir))

        report(results, lat_results, skipped, a)
        out_path = a.json_out or HERE / "results" / time.strftime("pgbench-%Y%m%d-%H%M%S.json")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(
            json.dumps(
                {
                    "settings": {
                        "duration": a.duration,
                        "latency_duration": a.latency_duration,
                        "scale": a.scale,
                        "clients": a.clients,
                        "threads": a.threads,
                    },
                    "throughput": [asdict(r) for r in results],
                    "latency": [asdict(r) for r in lat_results],
                    "skipped": skipped,
                },
                indent=2,
            )
        )
        log(f"results written to {out_path}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(results: list[Result], lat: list[Result], skipped: dict[str, str], a: argparse.Namespace) -> None:
    print(f"\npgbench -S, {a.clients} clients, {a.threads} threads, {a.duration} s, scale {a.scale}")
    print(f"{'endpoint':<14} {'mode':<9} {'TPS':>10} {'avg ms':>8} {'proxy CPU µs/tx':>16}")
    for r in results:
        cpu = fmt(r.proxy_cpu_us_per_tx)
        print(f"{r.endpoint:<14} {r.mode:<9} {r.tps:>10.0f} {r.latency_ms:>8.3f} {cpu:>16}")
    by = {(r.endpoint, r.mode): r for r in results}
    print()
    for mode in a.modes.split(","):
        pw = by.get(("pgward", mode))
        if pw is None:
            continue
        for other in ("pgbouncer", "direct-tls", "direct-plain"):
            o = by.get((other, mode))
            if o is not None:
                print(f"{mode:<9} pgward/{other}: TPS ratio {pw.tps / o.tps:.2f}")
    print(f"\n1 client, -M prepared, {a.latency_duration} s (per-transaction latencies from pgbench --log)")
    print(f"{'endpoint':<14} {'TPS':>8} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU µs/tx':>16}")
    for r in lat:
        print(
            f"{r.endpoint:<14} {r.tps:>8.0f} {fmt(r.p50_ms, '.3f'):>8} {fmt(r.p99_ms, '.3f'):>8} "
            f"{fmt(r.proxy_cpu_us_per_tx):>16}"
        )
    lat_by = {r.endpoint: r for r in lat}
    base = lat_by.get("direct-tls") or lat_by.get("direct-plain")
    for name in ("pgward", "pgbouncer"):
        r = lat_by.get(name)
        if r and base and r.p50_ms is not None and base.p50_ms is not None:
            print(f"{name} adds {1000 * (r.p50_ms - base.p50_ms):.0f} µs at p50 over {base.endpoint}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


if __name__ == "__main__":
    sys.exit(main())
