"""Plumbing shared by the three local servers: paths, probes, detached processes.

Why a small supervisor of our own rather than Docker or systemd: CI and the
developer machines have neither a Docker engine nor a service manager we may
drive, only the Debian packages and Maven Central. So every server runs as a
plain process in its own session (it outlives the command that started it) and
is remembered by a pid file under the stack directory: `down` stops only what
`up` started and never a server somebody else runs.

Everything here is synchronous on purpose: the chaos tests call
`start_service`/`kill_service` from inside pytest's running event loop, where
`asyncio.run` is not allowed. The few async clients (asyncpg) run in a
short-lived thread with a loop of their own (`run_async`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from streams import paths
from streams.settings import Settings

T = TypeVar("T")

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", ""})


class StackError(RuntimeError):
    """A stack operation failed; the message says what to install or change."""


ProbeFailure = Literal["unreachable", "tls", "auth", "config", "protocol"]


class SecureProbeError(Exception):
    """A secure endpoint did not do its part; `kind` says which part.

    unreachable: nothing listens there; tls: no TLS, or a certificate the
    stack's CA did not sign; auth: the credentials were refused; config: the
    server is configured otherwise (a mechanism or a listener missing);
    protocol: an answer that makes no sense.
    """

    def __init__(self, kind: ProbeFailure, detail: str) -> None:
        super().__init__(detail)
        self.kind: ProbeFailure = kind
        self.detail = detail


# --- addresses ---------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where a server is expected to answer, as read from the settings."""

    host: str
    port: int

    @property
    def is_local(self) -> bool:
        """True when we may start the server ourselves on 127.0.0.1."""
        return self.host in LOCAL_HOSTS

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def address_from_url(url: str, default_port: int) -> Address:
    """Host and port of a `scheme://user:pass@host:port/...` URL."""
    parts = urlsplit(url)
    return Address(parts.hostname or "localhost", parts.port or default_port)


def address_from_hostport(hostport: str, default_port: int) -> Address:
    """Host and port of a Kafka-style `host:port` bootstrap entry."""
    return address_from_url(f"//{hostport.strip()}", default_port)


def port_open(address: Address, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at `address`."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return True
    except OSError:
        return False


# --- paths -------------------------------------------------------------------


def project_root() -> Path:
    """The source checkout when installed editable, else the per-user data home.

    Anchoring relative paths here, not in the current directory, lets `stack down`
    run from any directory find the pid files `stack up` wrote.
    """
    root = paths.project_root()
    return root if root is not None else paths.data_home()


def cache_root() -> Path:
    """Downloads shared by every stack of this home (Maven repository, Kafka jars)."""
    return paths.data_home()


def stack_root(settings: Settings) -> Path:
    """The directory holding every server's data, config, logs and pid files."""
    path = Path(settings.stack_dir).expanduser()
    return path if path.is_absolute() else project_root() / path


def short_hash(path: Path) -> str:
    """A short stable name for a directory, to name a stand-in for it elsewhere."""
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a log file, to put into an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None, holder: str = "") -> Iterator[None]:
    """An exclusive lock between processes (`flock` on `path`), e.g. two `stack up`
    at once. Waits for another holder forever, or up to `timeout_s` and then
    raises TimeoutError naming `path` and who else (`holder`) may hold it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path} still held after {timeout_s:g} s{f' ({holder})' if holder else ''}"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- commands ----------------------------------------------------------------


def require_binary(name: str, install_hint: str) -> str:
    """The full path of a command, or a StackError saying how to install it."""
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` not found on PATH: install it with `{install_hint}`")
    return found


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = 300) -> str:
    """Run a command to completion; its output, or a StackError that shows it."""
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise StackError(f"failed ({done.returncode}): {' '.join(argv)}\n{output}")
    return done.stdout


def run_async(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-probe") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=timeout)


# --- processes ---------------------------------------------------------------

# A throwaway interpreter starts the server and exits at once, so the server is
# never our child: it is re-parented to init like one started by a CLI call that
# has ended, no Popen object of ours outlives it (ResourceWarning at exit), and
# a server killed by a test is reaped by init, not left a zombie in pytest.
_LAUNCHER = """
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    server = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
print(server.pid)
"""


def spawn_detached(argv: list[str], *, log: Path, cwd: Path) -> int:
    """Start a long-running server in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
    launcher = [sys.executable, "-I", "-W", "ignore", "-c", _LAUNCHER, str(log), *argv]
    return int(run(launcher, cwd=cwd, timeout=30))


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in {"Z", "X", None}


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self").exists() else "?"
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def process_matches(pid: int, needle: str) -> bool:
    """True when the command line of `pid` contains `needle` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust the pid file
    except OSError:
        return False
    # Empty while the kernel cannot read the process's memory (seen during JVM
    # start-up); zombies are empty too, but `pid_alive` has ruled them out.
    return not cmdline or needle.encode() in cmdline


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (e.g. PostgreSQL backends of a postmaster)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def read_pid(path: Path) -> int | None:
    """The pid recorded in a pid file (first line), if any."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Wait until none of `pids` runs; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def send_signal(pids: list[int], sig: signal.Signals) -> None:
    """Signal every pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def terminate(pid: int, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    send_signal([pid], signal.SIGTERM)
    if not wait_gone([pid], grace):
        send_signal([pid], signal.SIGKILL)
        wait_gone([pid], 10)


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    log: Path | None = None,
    interval: float = 0.2,
) -> None:
    """Poll `check` until it passes; fail early when the process we wait for died."""
    deadline = time.monotonic() + timeout
    while not check():
        if alive is not None and not alive():
            raise StackError(f"{what} exited during start-up{_tail_note(log)}")
        if time.monotonic() >= deadline:
            raise StackError(f"{what} not healthy after {timeout:.0f} s{_tail_note(log)}")
        time.sleep(interval)


def _tail_note(log: Path | None) -> str:
    return "" if log is None else f"; end of {log}:\n{log_tail(log)}"


# --- services ----------------------------------------------------------------


@dataclass
class Outcome:
    """What `ensure` did for one server, for the CLI to print."""

    service: str
    address: Address
    action: str  # "reused", "running" (ours, already up) or "started"
    seconds: float
    pid: int | None = None
    notes: list[str] = field(default_factory=list)


class Service(ABC):
    """One local server: probe it, start it when missing, stop what we started."""

    name: ClassVar[str]
    start_timeout: ClassVar[float] = 60.0
    stop_grace: ClassVar[float] = 10.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = stack_root(settings) / self.name

    @property
    @abstractmethod
    def address(self) -> Address:
        """Where the settings say the server answers."""

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    @abstractmethod
    def secure_address(self) -> Address:
        """Where the secure endpoint answers (TLS, the `rpcache` user: tools/stack/secure.py)."""

    @abstractmethod
    def answers(self) -> bool:
        """A real protocol round trip succeeded (not merely an open port)."""

    @abstractmethod
    def secure_problem(self) -> SecureProbeError | None:
        """None when the secure endpoint completes a TLS handshake against the stack's CA
        and accepts the stack's credentials; else what failed. Needs the credentials
        (StackError without them)."""

    @abstractmethod
    def pid(self) -> int | None:
        """The pid of the server this stack started, while it runs."""

    @abstractmethod
    def _start(self, notes: list[str]) -> None:
        """Launch the server (it need not be healthy yet)."""

    def ports_needed(self) -> list[int]:
        """Ports that must be free before `_start`."""
        return [self.address.port]

    def _after_ready(self, notes: list[str]) -> None:  # noqa: B027 (optional hook)
        """Hook: what must exist once the server answers (e.g. the database)."""

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(stack_root(self.settings) / f".{self.name}.lock")

    def ensure(self) -> Outcome:
        """Make the server answer: reuse whatever answers, else start ours and wait."""
        started = time.monotonic()
        notes: list[str] = []
        with self._lock():
            action = self._bring_up(notes)
            self._after_ready(notes)
        return Outcome(
            self.name, self.address, action, time.monotonic() - started, self.pid(), notes
        )

    def _bring_up(self, notes: list[str]) -> str:
        if self.answers():
            return "running" if self.pid() is not None else "reused"
        if self.pid() is None:
            self._check_startable()
            self._start(notes)
            action = "started"
        else:
            action = "running"  # ours, still starting (e.g. a concurrent `up`)
        wait_until(
            self.answers,
            what=f"{self.name} at {self.address}",
            timeout=self.start_timeout,
            alive=lambda: self.pid() is not None,
            log=self.log_path,
        )
        return action

    def _check_startable(self) -> None:
        if not self.address.is_local:
            raise StackError(
                f"{self.name} does not answer at {self.address}, and that is not this machine"
            )
        busy = self._busy_ports(timeout=10)  # a server just killed may still hold them
        if busy:
            raise StackError(
                f"{self.name}: port {busy[0]} is taken by a process that does not answer as "
                f"{self.name} with the configured URL; stop it or change the settings"
            )

    def _busy_ports(self, timeout: float) -> list[int]:
        """Ports of `ports_needed` still accepting connections after up to `timeout` s.

        A process's sockets close when its last thread exits, which can be after
        its main thread already shows as a zombie (a JVM has dozens of threads).
        """
        addresses = [Address("127.0.0.1", port) for port in self.ports_needed()]
        deadline = time.monotonic() + timeout
        while True:
            busy = [address.port for address in addresses if port_open(address, timeout=0.2)]
            if not busy or time.monotonic() >= deadline:
                return busy
            time.sleep(0.1)

    def stop(self) -> bool:
        """Stop our server gracefully; False when this stack runs none."""
        with self._lock():
            pid = self.pid()
            if pid is None:
                return False
            self._stop(pid)
            self._busy_ports(timeout=10)
            return True

    def _stop(self, pid: int) -> None:
        terminate(pid, self.stop_grace)

    def kill(self) -> bool:
        """SIGKILL our server, as a crash would; False when this stack runs none."""
        with self._lock():
            pid = self.pid()
            if pid is None:
                return False
            victims = [pid, *child_pids(pid)]
            send_signal(victims, signal.SIGKILL)
            wait_gone(victims, 10)
            self._busy_ports(timeout=10)
            return True
