"""A PostgreSQL cluster of the project's own, from Debian's `postgresql` package.

Why a private cluster rather than Debian's `main` one: its data directory sits
under the stack directory, it trusts local TCP connections (no password to set
up), and the tests may kill and restart it at will. `fsync=on` stays on because
PostgreSQL is the source of truth and the crash tests rely on it.

PostgreSQL refuses to run as root. When we are root, the data directory is
given to the `postgres` OS user and initdb/pg_ctl run through `runuser`; if
that user cannot reach the stack directory, the cluster moves to
/var/tmp/rpcache-<hash of that path>/postgres and `up` says so.

TLS is on (`ssl = on`, the stack's certificate, copied next to the data
directory for the cluster's owner: PostgreSQL refuses a key others may read),
and the role `rpcache` (LOGIN CREATEDB, scram-sha-256 password) may connect
only over TLS: a block at the top of pg_hba.conf, rewritten at each start,
lets it in with `hostssl … scram-sha-256` and rejects it otherwise. The
`postgres` superuser keeps its trusted access. The role owns the database
of DATABASE_URL (and the tables in its `public` schema), so a worker pointed
at the secure endpoint works on the same data as one on the plain one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from streams.settings import Settings
from streams.tools.stack.common import (
    Address,
    SecureProbeError,
    Service,
    StackError,
    address_from_url,
    pid_alive,
    process_matches,
    read_pid,
    run,
    run_async,
    short_hash,
    stack_root,
)
from streams.tools.stack.secure import (
    TLS_HOSTNAME,
    Credentials,
    ensure_credentials,
    ensure_tls,
    load_credentials,
    postgres_database,
    postgres_scram_verifier,
    postgres_secure_address,
    postgres_verifier_matches,
    tls_paths,
)

DEFAULT_PORT = 5432
OS_USER = "postgres"
INSTALL_HINT = "bash scripts/install-system-deps.sh  (or: apt-get install postgresql)"
CONF_INCLUDE = "include_if_exists = 'rpcache.conf'"
SOCKET_PATH_LIMIT = 100  # sun_path holds 107 bytes, including ".s.PGSQL.<port>"
HBA_BEGIN = "# BEGIN rpcache stack: the secure user over TLS only (rewritten at each start)"
HBA_END = "# END rpcache stack"


class PostgresServer(Service):
    """A PostgreSQL cluster on 127.0.0.1 at the port of DATABASE_URL."""

    name = "postgres"
    start_timeout = 60.0
    stop_grace = 60.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.run_as = OS_USER if os.geteuid() == 0 else None
        self._cluster_dir: Path | None = None

    # --- where things are ------------------------------------------------------

    @property
    def url(self) -> str:
        return self.settings.database_url.get_secret_value()

    @property
    def address(self) -> Address:
        return address_from_url(self.url, DEFAULT_PORT)

    @property
    def secure_address(self) -> Address:
        """The same port: PostgreSQL negotiates TLS on its one port."""
        return postgres_secure_address(self.settings)

    @property
    def cluster_dir(self) -> Path:
        """<stack_dir>/postgres, or the /var/tmp fallback when `postgres` cannot reach it."""
        if self._cluster_dir is None:
            self._cluster_dir = self._pick_cluster_dir()
        return self._cluster_dir

    @property
    def data_dir(self) -> Path:
        return self.cluster_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.cluster_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        run_dir = self.cluster_dir / "run"
        if len(str(run_dir)) <= SOCKET_PATH_LIMIT - 20:
            return run_dir
        return Path("/tmp") / f"rpcache-{short_hash(self.cluster_dir)}-pg"

    def _pick_cluster_dir(self) -> Path:
        preferred = stack_root(self.settings) / self.name
        if self.run_as is None or self._usable_by_os_user(preferred):
            return preferred
        fallback = Path("/var/tmp") / f"rpcache-{short_hash(preferred)}" / self.name
        fallback.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not self._usable_by_os_user(fallback):
            raise StackError(
                f"the `{OS_USER}` OS user can write neither {preferred} nor {fallback}"
            )
        return fallback

    def _usable_by_os_user(self, directory: Path) -> bool:
        directory.mkdir(parents=True, exist_ok=True)
        _chown(directory, OS_USER)
        probe = subprocess.run(
            ["runuser", "-u", OS_USER, "--", "test", "-w", str(directory)], check=False
        )
        return probe.returncode == 0

    # --- probes ----------------------------------------------------------------

    def answers(self) -> bool:
        """An asyncpg connection with DATABASE_URL succeeds (a missing database is fine)."""
        return run_async(lambda: _probe(self.url))

    def secure_problem(self) -> SecureProbeError | None:
        """The role connects with TLS verified against the stack's CA (verify-full)."""
        creds = load_credentials(self.settings)
        cafile = tls_paths(self.settings).ca
        database = postgres_database(self.settings)
        return run_async(lambda: postgres_tls_problem(self.secure_address, database, creds, cafile))

    def pid(self) -> int | None:
        pid = read_pid(self.data_dir / "postmaster.pid")
        if pid is None or not pid_alive(pid) or not process_matches(pid, str(self.data_dir)):
            return None
        return pid

    # --- life cycle ------------------------------------------------------------

    def _start(self, notes: list[str]) -> None:
        bindir = postgres_bindir(self.data_dir)
        if self.cluster_dir != stack_root(self.settings) / self.name:
            notes.append(
                f"`{OS_USER}` cannot reach the stack directory: cluster in {self.cluster_dir}"
            )
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bindir)
            notes.append(f"created a new cluster in {self.data_dir}")
        notes += ensure_tls(self.settings)
        ensure_credentials(self.settings)
        self._copy_certificate()
        self._write_config()
        self._write_hba()
        self._drop_stale_locks()
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path)]
        self._run([*pg_ctl, "-w", "-t", str(int(self.start_timeout)), "start"])

    def _initdb(self, bindir: Path) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        _chown(self.data_dir, self.run_as)
        self._run(
            [
                str(bindir / "initdb"), "-D", str(self.data_dir),
                "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--locale=C",
            ]
        )  # fmt: skip
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# rpcache: settings of `rpcache stack`\n{CONF_INCLUDE}\n")

    def _drop_stale_locks(self) -> None:
        """Remove lock files (postmaster.pid, socket locks) of a postmaster gone or a zombie.

        PostgreSQL checks their pid with kill(pid, 0), which succeeds for a
        zombie: after a SIGKILL, until init reaps the old processes (some
        container inits are slow to, or never do), it would refuse to start.
        """
        locks = [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]
        for lock in locks:
            pid = read_pid(lock)
            if pid is not None and not pid_alive(pid):
                lock.unlink(missing_ok=True)

    @property
    def tls_dir(self) -> Path:
        """The cluster owner's copy of the certificate and key."""
        return self.cluster_dir / "tls"

    def _copy_certificate(self) -> None:
        """Copy the stack's certificate and key for the cluster's owner, key 0600.

        PostgreSQL refuses a key file others may read, and the stack's own may
        sit where the `postgres` OS user cannot go.
        """
        paths = tls_paths(self.settings)
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        self.tls_dir.chmod(0o700)
        _chown(self.tls_dir, self.run_as)
        for source, name in ((paths.server_cert, "server.crt"), (paths.server_key, "server.key")):
            target = self.tls_dir / name
            target.unlink(missing_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(source.read_bytes())
            _chown(target, self.run_as)

    def _write_config(self) -> None:
        """Rewritten on every start, so a new port in DATABASE_URL takes effect."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        _chown(self.socket_dir, self.run_as)
        conf = self.data_dir / "rpcache.conf"
        conf.write_text(
            "# Generated by `rpcache stack up` (streams/tools/stack/postgres.py).\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.address.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "fsync = on\n"
            "max_connections = 200\n"
            "ssl = on\n"
            f"ssl_cert_file = '{self.tls_dir / 'server.crt'}'\n"
            f"ssl_key_file = '{self.tls_dir / 'server.key'}'\n"
            "password_encryption = 'scram-sha-256'\n"
        )
        _chown(conf, self.run_as)
        self.log_path.touch()
        _chown(self.log_path, self.run_as)

    def _write_hba(self) -> None:
        """Put the secure user's lines first in pg_hba.conf (first match wins)."""
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        if HBA_BEGIN in lines and HBA_END in lines:
            del lines[lines.index(HBA_BEGIN) : lines.index(HBA_END) + 1]
        hba.write_text("\n".join([*hba_lines(load_credentials(self.settings)), *lines]) + "\n")

    def _stop(self, pid: int) -> None:
        pg_ctl = [str(postgres_bindir(self.data_dir) / "pg_ctl"), "-D", str(self.data_dir)]
        try:
            self._run([*pg_ctl, "-m", "fast", "-w", "-t", str(int(self.stop_grace)), "stop"])
        except StackError:
            self._run([*pg_ctl, "-m", "immediate", "-w", "stop"])

    def _run(self, argv: list[str]) -> str:
        """Run a PostgreSQL tool as the cluster owner."""
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return run([*prefix, *argv], cwd=self.cluster_dir, timeout=self.start_timeout + 30)

    def _after_ready(self, notes: list[str]) -> None:
        """The database of DATABASE_URL exists once `up` returns; ours has the secure role."""
        if run_async(lambda: ensure_database(self.url)):
            notes.append(f"created database {database_name(self.url)!r}")
        if self.pid() is None:
            return  # not ours: never add a role to a server somebody else runs
        try:
            creds = load_credentials(self.settings)
        except StackError:
            return  # started by an older rpcache: `up --secure` says what to do
        notes += run_async(lambda: ensure_secure_role(self.url, creds))


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user, user)


def postgres_bindir(data_dir: Path) -> Path:
    """The server binaries: the data directory's major version if installed, else the newest."""
    candidates = {
        match.group(1): path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
        if (match := re.fullmatch(r"(\d+)", path.parent.parent.name))
    }
    with contextlib.suppress(OSError):
        wanted = (data_dir / "PG_VERSION").read_text().strip()
        if wanted in candidates:
            return candidates[wanted]
    if candidates:
        return candidates[max(candidates, key=int)]
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        return Path(on_path).parent
    raise StackError(f"PostgreSQL server binaries (pg_ctl, initdb) not found: run {INSTALL_HINT}")


# --- asyncpg, run in a thread of its own by the callers ------------------------


async def _probe(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        return True  # the server works; `ensure_database` creates the database
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


def database_name(url: str) -> str:
    """The database of a PostgreSQL URL (libpq's default: the user name)."""
    parts = urlsplit(url)
    return parts.path.lstrip("/") or parts.username or "postgres"


async def ensure_database(url: str) -> bool:
    """Create the database of `url` when it is missing; True when it was created."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = database_name(url)
    conn = await asyncpg.connect(url, database="postgres", timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
    except asyncpg.DuplicateDatabaseError:
        return False  # created meanwhile by a concurrent `up`
    finally:
        await conn.close()
    return True


def hba_lines(creds: Credentials) -> list[str]:
    """The secure user: scram-sha-256 over TLS from this machine, rejected otherwise."""
    user = creds.username
    return [
        HBA_BEGIN,
        f"hostssl   all  {user}  127.0.0.1/32  scram-sha-256",
        f"hostssl   all  {user}  ::1/128       scram-sha-256",
        f"hostnossl all  {user}  all           reject",
        f"local     all  {user}                reject",
        HBA_END,
    ]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_secure_role(admin_url: str, creds: Credentials) -> list[str]:
    """The role, its password, and its ownership of the database of `admin_url`.

    Idempotent. The password is sent as its SCRAM verifier, never in clear.
    Tables that another role (the plain endpoint's `postgres`) created in the
    database's `public` schema are given to the role too, and what that role
    creates later is granted to it, so both endpoints share the data.
    """
    notes: list[str] = []
    role = _ident(creds.username)
    database = database_name(admin_url)
    conn = await asyncpg.connect(admin_url, database="postgres", timeout=5)
    try:
        found = await conn.fetchrow(
            "SELECT rolpassword, rolcanlogin AND rolcreatedb AS attributes_ok "
            "FROM pg_authid WHERE rolname = $1",
            creds.username,
        )
        if found is None:
            verifier = postgres_scram_verifier(creds.password)
            await conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{verifier}'")
            notes.append(f"created role {creds.username!r} (TLS only)")
        else:
            if not found["attributes_ok"]:
                await conn.execute(f"ALTER ROLE {role} LOGIN CREATEDB")
            if not postgres_verifier_matches(found["rolpassword"], creds.password):
                verifier = postgres_scram_verifier(creds.password)
                await conn.execute(f"ALTER ROLE {role} PASSWORD '{verifier}'")
                notes.append(f"set the password of role {creds.username!r}")
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", database
        )
        if owner is not None and owner != creds.username:
            await conn.execute(f"ALTER DATABASE {_ident(database)} OWNER TO {role}")
            notes.append(f"database {database!r} now owned by {creds.username!r}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute("SET lock_timeout = '5s'")
        tables = await conn.fetch(_FOREIGN_TABLES, creds.username)
        for row in tables:
            await conn.execute(f"ALTER TABLE public.{_ident(row['relname'])} OWNER TO {role}")
        if tables:
            notes.append(f"{len(tables)} table(s) of {database!r} now owned by {creds.username!r}")
        await conn.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {role}; "
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO {role}"
        )
    except asyncpg.LockNotAvailableError:
        notes.append(f"tables of {database!r} busy: their owner is left as it is")
    finally:
        await conn.close()
    return notes


_FOREIGN_TABLES = """
SELECT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
  AND pg_get_userbyid(c.relowner) <> $1
ORDER BY c.relname
"""


async def postgres_tls_problem(
    address: Address, database: str, creds: Credentials, cafile: Path
) -> SecureProbeError | None:
    """None when `creds` log in over TLS verified against `cafile` (verify-full)."""
    try:
        context = ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        return SecureProbeError("tls", f"cannot load the CA {cafile}: {exc}")
    try:
        conn = await asyncpg.connect(
            host=TLS_HOSTNAME if address.is_local else address.host,
            port=address.port,
            user=creds.username,
            password=creds.password,
            database=database,
            ssl=context,
            timeout=5,
        )
    except ssl.SSLCertVerificationError as exc:
        return SecureProbeError("tls", f"its certificate is not trusted by {cafile}: {exc}")
    except asyncpg.InvalidPasswordError as exc:
        return SecureProbeError("auth", f"role {creds.username!r} refused: {exc}")
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        return SecureProbeError("config", f"role {creds.username!r} not let in: {exc}")
    except asyncpg.InvalidCatalogNameError as exc:
        return SecureProbeError("config", str(exc))
    except ConnectionError as exc:
        if "SSL" in str(exc):  # "rejected SSL upgrade": ssl is off
            return SecureProbeError("tls", f"no TLS at {address} (the server has ssl off)")
        return SecureProbeError("unreachable", f"{address}: {exc}")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return SecureProbeError("unreachable", f"{address}: {type(exc).__name__}: {exc}")
    try:
        encrypted = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    if not encrypted:
        return SecureProbeError("tls", "the connection is not encrypted")
    return None
