#!/usr/bin/env python3
"""pgbench -S through pgward with session recording off and on (and with the audit log too), and
the gateway's peak RSS while a recorded session reads a 1,000,000-row result.

    bench/recording.py [--duration 15] [--clients 8] [--rounds 2] [--scale 1]

Same set-up as bench/audit_modes.py (its helpers are reused): throwaway embedded PostgreSQL 18
target and store, connection `bench`, TLS verify-full on loopback. Modes, alternated within each
round: `off` (PGWARD_RECORDING=off, PGWARD_AUDIT_MODE=off), `recording` (recording on, audit off),
`audit+recording` (recording on, audit buffered). Then, per recording setting, `psql` reads
`select g, repeat('x', 40) from generate_series(1, 1000000) g` while the gateway's VmRSS is sampled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from audit_modes import PGWARD, POLICY, log, pgbench, run, start_pgward  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from control_plane.demo.certs import ensure_certs  # noqa: E402
from control_plane.pgserver import LocalPostgres  # noqa: E402

MODES = {"off": ("off", "off"), "recording": ("on", "off"), "audit+recording": ("on", "buffered")}
BIG = "select g, repeat('x', 40) from generate_series(1, 1000000) g"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def big_result_rss(env: dict[str, str], pid: int) -> tuple[int, int, float]:
    """(RSS before, peak RSS during, seconds) for the 1M-row result read with psql."""
    before = rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    start = time.monotonic()
    run(["psql", "-X", "-qAt", "-c", BIG, "-o", "/dev/null"], env)
    elapsed = time.monotonic() - start
    done.set()
    t.join()
    return before, peak[0], elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgward-recording-bench-"))
    os.chmod(work, 0o755)  # noqa: S103 - as root the clusters run as another user who must traverse it
    target = LocalPostgres(work / "target", durable=False).start()
    store = LocalPostgres(work / "store", durable=True).start()
    try:
        run(["pgbench", "-i", "-q", "-s", str(args.scale), target.dsn()], dict(os.environ))
        store.create_database("pgward")
        tls = ensure_certs(work / "tls")
        env = {
            **os.environ,
            "PGWARD_STATE_DIR": str(work / "state"),
            "PGWARD_DATABASE_URL": store.sqlalchemy_url("pgward"),
            "PGWARD_SECRET_KEY": Fernet.generate_key().decode(),
            "PGWARD_TLS_CERT": str(tls.server_cert),
            "PGWARD_TLS_KEY": str(tls.server_key),
        }
        run([*PGWARD, "migrate"], env)
        run(
            [
                *PGWARD,
                "connections",
                "add",
                "bench",
                "--host",
                "127.0.0.1",
                "--port",
                str(target.port),
                "--database",
                "postgres",
                "--user",
                "postgres",
                "--tls-mode",
                "disable",
                "--password-stdin",
            ],
            env,
            stdin=target.superuser_password + "\n",
        )
        ci_token = run([*PGWARD, "identities", "create", "ci", "--group", "ci"], env)
        admin = run([*PGWARD, "identities", "create", "admin", "--group", "admins"], env)
        client_env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGDATABASE": "bench",
            "PGUSER": "ci",
            "PGPASSWORD": ci_token,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(tls.ca_cert),
        }
        results: dict[str, dict[str, list[float]]] = {}
        rss: dict[str, tuple[int, int, float]] = {}
        policy_applied = False
        for rnd in range(args.rounds):
            for name, (recording, audit) in MODES.items():
                mode_env = {**env, "PGWARD_RECORDING": recording}
                proc, port, api = start_pgward(mode_env, audit, work / f"serve-{name}.log")
                try:
                    if not policy_applied:
                        httpx.put(
                            f"http://127.0.0.1:{api}/v1/policies/{POLICY['name']}",
                            json=POLICY,
                            headers={"Authorization": f"Bearer {admin}"},
                            timeout=30,
                        ).raise_for_status()
                        policy_applied = True
                        time.sleep(3)
                    penv = {**client_env, "PGPORT": str(port)}
                    for qmode in ("simple", "prepared"):
                        r = pgbench(
                            penv,
                            ["-S", "-c", str(args.clients), "-j", "2", "-M", qmode],
                            args.duration,
                            proc.pid,
                            store.data_dir,
                        )
                        results.setdefault(qmode, {}).setdefault(name, []).append(r["tps"])
                        log(
                            f"round {rnd + 1} {name:16} {qmode:8} {r['tps']:9.0f} tps "
                            f"{r['cpu_us_per_tx']:6.1f} us cpu/tx"
                        )
                    if rnd == 0 and name in ("off", "recording"):
                        rss[name] = big_result_rss(penv, proc.pid)
                        b, p, s = rss[name]
                        log(f"1M rows, {name}: RSS {b // 1024} MiB -> peak {p // 1024} MiB, {s:.2f} s")
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
        print(f"\npgbench -S -c {args.clients} -j 2 -T {args.duration}, {args.rounds} round(s), mean TPS")
        for qmode, by_mode in results.items():
            base = statistics.mean(by_mode["off"])
            for name in MODES:
                tps = statistics.mean(by_mode[name])
                print(f"{name:18}{qmode:10}{tps:10.0f}{tps / base:8.2f}")
        for name, (b, p, s) in rss.items():
            print(
                f"1M-row result, recording {name:10}: RSS {b / 1024:.0f} MiB before, "
                f"peak {p / 1024:.0f} MiB ({(p - b) / 1024:+.0f} MiB), {s:.2f} s"
            )
        recordings = list((work / "state" / "recordings").glob("*.pgwrec"))
        biggest = max((f.stat().st_size for f in recordings), default=0)
        print(f"largest recording: {biggest / 1048576:.1f} MiB ({len(recordings)} files)")
    finally:
        target.stop()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
