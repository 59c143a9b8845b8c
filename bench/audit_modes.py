#!/usr/bin/env python3
"""pgbench -S through pgward with the audit log off, buffered and strict.

    bench/audit_modes.py [--duration 15] [--clients 8] [--rounds 2] [--scale 1]

Starts its own throwaway clusters (embedded PostgreSQL 18): a target with `pgbench -i -s SCALE`
and a metadata store (fsync on, as a real store), registers the target as connection `bench`, a
`ci` service identity allowed everything, then for each round and each audit mode starts `pgward
serve` with `PGWARD_AUDIT_MODE=<mode>` (TLS verify-full on loopback) and runs `pgbench -n -S -c
CLIENTS -j 2 -T DURATION` in `-M simple` and `-M prepared`. Modes alternate within each round so
drift on a shared machine hits them alike; the table shows the mean TPS per mode and the ratio to
`off`, and the gateway's CPU time per transaction. Results also go to
bench/results/audit-<timestamp>.json (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from _common import cpu_seconds  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from control_plane.demo.certs import ensure_certs  # noqa: E402
from control_plane.pgserver import LocalPostgres  # noqa: E402

PGWARD = [sys.executable, "-m", "control_plane.cli"]
MODES = ("off", "buffered", "strict")
POLICY = {
    "kind": "Policy",
    "name": "bench-ci",
    "subjects": {"service_identities": ["ci"]},
    "connections": ["*"],
    "rules": [{"allow": ["all"]}],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    r = subprocess.run(args, env=env, input=stdin, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip()


def start_pgward(env: dict[str, str], mode: str, log_file: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port, api = free_port(), free_port()
    env = {
        **env,
        "PGWARD_AUDIT_MODE": mode,
        "PGWARD_PROXY_LISTEN": f"127.0.0.1:{port}",
        "PGWARD_API_LISTEN": f"127.0.0.1:{api}",
    }
    with log_file.open("ab") as out:
        proc = subprocess.Popen([*PGWARD, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgward serve exited:\n{log_file.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{api}/readyz", timeout=2).status_code == 200:
                return proc, port, api
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("pgward serve did not become ready")


def cluster_cpu(data_dir: Path) -> float:
    """CPU seconds of a cluster's postmaster and all its backends (children)."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if int(proc.name) == postmaster or ppid == postmaster:
                total += cpu_seconds(int(proc.name))
        except (OSError, ValueError):
            continue
    return total


def pgbench(
    env: dict[str, str], args: list[str], duration: int, pid: int, store_dir: Path
) -> dict[str, float]:
    before = cpu_seconds(pid)
    store_before = cluster_cpu(store_dir)
    r = subprocess.run(
        ["pgbench", "-n", *args, "-T", str(duration)],
        env=env,
        capture_output=True,
        text=True,
        timeout=duration + 120,
    )
    cpu = cpu_seconds(pid) - before
    store_cpu = cluster_cpu(store_dir) - store_before
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{r.stdout}\n{r.stderr}")
    tps = float(re.search(r"^tps = ([\d.]+)", r.stdout, re.M).group(1))  # type: ignore[union-attr]
    tx = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    return {
        "tps": tps,
        "transactions": tx,
        "cpu_us_per_tx": cpu * 1e6 / max(tx, 1),
        "store_cpu_us_per_tx": store_cpu * 1e6 / max(tx, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", "15")))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("pgbench") is None:
        sys.exit("pgbench is not on PATH (install the PostgreSQL client tools)")

    work = Path(tempfile.mkdtemp(prefix="pgward-audit-bench-"))
    os.chmod(work, 0o755)  # noqa: S103 - as root the clusters run as another user who must traverse it
    target = LocalPostgres(work / "target", durable=False).start()
    store = LocalPostgres(work / "store", durable=True).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log(f"pgbench -i -s {args.scale} on the target ...")
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
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        policy_applied = False
        for rnd in range(args.rounds):
            for mode in MODES:
                proc, port, api = start_pgward(env, mode, work / f"serve-{mode}.log")
                procs.append(proc)
                try:
                    if not policy_applied:
                        r = httpx.put(
                            f"http://127.0.0.1:{api}/v1/policies/{POLICY['name']}",
                            json=POLICY,
                            headers={"Authorization": f"Bearer {admin}"},
                            timeout=30,
                        )
                        r.raise_for_status()
                        policy_applied = True
                        time.sleep(3)  # the policy poll interval: the gateway sees the policy
                    for qmode in ("simple", "prepared"):
                        r = pgbench(
                            {**client_env, "PGPORT": str(port)},
                            ["-S", "-c", str(args.clients), "-j", "2", "-M", qmode],
                            args.duration,
                            proc.pid,
                            store.data_dir,
                        )
                        results.setdefault(qmode, {}).setdefault(mode, []).append(r)
                        log(
                            f"round {rnd + 1} {mode:8} {qmode:8} {r['tps']:9.0f} tps  "
                            f"{r['cpu_us_per_tx']:6.1f} us cpu/tx, store {r['store_cpu_us_per_tx']:6.1f}"
                        )
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
        report(results, args)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        target.stop()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, dict[str, list[dict[str, float]]]], args: Any) -> None:
    out: dict[str, Any] = {"clients": args.clients, "duration": args.duration, "rounds": args.rounds}
    print(f"\npgbench -S -c {args.clients} -j 2 -T {args.duration}, {args.rounds} round(s), mean TPS")
    print(f"{'mode':10}{'query':10}{'tps':>10}{'vs off':>8}{'cpu us/tx':>11}{'store us/tx':>13}")
    for qmode, by_mode in results.items():
        base = statistics.mean(r["tps"] for r in by_mode["off"])
        for mode in MODES:
            tps = statistics.mean(r["tps"] for r in by_mode[mode])
            cpu = statistics.mean(r["cpu_us_per_tx"] for r in by_mode[mode])
            store_cpu = statistics.mean(r["store_cpu_us_per_tx"] for r in by_mode[mode])
            print(f"{mode:10}{qmode:10}{tps:10.0f}{tps / base:8.2f}{cpu:11.1f}{store_cpu:13.1f}")
            out.setdefault(qmode, {})[mode] = {
                "tps": tps,
                "vs_off": tps / base,
                "cpu_us_per_tx": cpu,
                "store_cpu_us_per_tx": store_cpu,
            }
    dest = HERE / "results" / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"\nresults: {dest}")


if __name__ == "__main__":
    main()
