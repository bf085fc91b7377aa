"""`rpcache worker --processes N`: N worker processes of one consumer group.

One worker process is one Python thread for Faust's delivery and our
pipeline, so it uses at most one core (README, Performance). Faust scales by
partition: every process of the same APP_ID joins the group and Kafka gives
each a share of the partitions (4 per topic by default, so up to 4 processes
are useful). This module starts the processes and keeps them as one unit
for whoever supervises it (systemd, Docker, a shell):

- each child gets its own `WORKER_ID` (`{WORKER_ID}-{i}`, its heartbeat row)
  and, with the web server on, its own port (`WORKER_WEB_PORT + i`);
- SIGTERM or SIGINT is passed to every child; the exit code is 0 when all
  stopped cleanly;
- when one child exits by itself (a crash, the watchdog's exit 75), the
  others are stopped and its exit code is returned, so the outer supervisor
  restarts the whole worker rather than running on with fewer consumers;
- when this process dies without passing anything on (SIGKILL, the OOM
  killer), each child notices within `PARENT_POLL_S` (`watch_parent`) and
  stops cleanly: orphans would keep consuming unsupervised, keep `rpcache
  check` green and hold the web ports, so the restart would fail.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from streams.observe.heartbeat import child_worker_id

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0
"""How long children get to stop cleanly before they are killed."""
SUPERVISOR_PID_ENV = "RPCACHE_SUPERVISOR_PID"
"""Set in each child's environment: the pid `watch_parent` expects as its parent."""
PARENT_POLL_S = 1.0
"""How often a child looks whether its supervisor still lives (seconds)."""


def child_env(base: Mapping[str, str], index: int, worker_id: str, web_port: int) -> dict[str, str]:
    """The environment of child `index`: its own heartbeat id and web port."""
    return {
        **base,
        "WORKER_ID": child_worker_id(worker_id, index),
        "WORKER_WEB_PORT": str(web_port + index),
        "WORKER_PROCESSES": "1",
        SUPERVISOR_PID_ENV: str(os.getpid()),
    }


def watch_parent(supervisor_pid: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """In a child: SIGTERM ourselves (a clean stop, as the supervisor would ask for)
    once our parent is no longer `supervisor_pid` (it died and we were re-parented).

    A daemon thread polling `os.getppid()`: portable, and the signal lands in the
    main thread, where Faust's handler stops the worker.
    """

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(poll_s)
        log.warning("the supervisor (pid %d) is gone; stopping this worker process", supervisor_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="watch-supervisor", daemon=True)
    thread.start()
    return thread


def run_processes(
    processes: int,
    command: Sequence[str],
    worker_id: str,
    web_port: int,
    poll_s: float = 0.2,
) -> int:
    """Run `command` `processes` times as children; return the exit code for the parent."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    # Handlers first: a SIGTERM while the children start must not orphan them.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(processes):
            env = child_env(os.environ, i, worker_id, web_port)
            children.append(subprocess.Popen(list(command), env=env))
        log.info("started %d worker processes: pids %s", processes, [c.pid for c in children])
        while not stopping:
            exited = [c for c in children if c.poll() is not None]
            if exited:
                first = exited[0]
                code = exit_code(first.returncode)
                log.error(
                    "worker process %d exited with %s; stopping the other %d",
                    first.pid,
                    code,
                    len(children) - len(exited),
                )
                _stop_all(children)
                return code if code != 0 else 1  # a worker never exits by itself
            time.sleep(poll_s)
        log.info("signal %d: stopping %d worker processes", stopping[0], len(children))
        codes = _stop_all(children)
        return max(codes)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_all(children: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every live child, wait, kill what is left; return the exit codes."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    codes: list[int] = []
    for child in children:
        try:
            codes.append(exit_code(child.wait(max(0.1, deadline - time.monotonic()))))
        except subprocess.TimeoutExpired:
            log.error("worker process %d did not stop in time; killing it", child.pid)
            child.kill()
            codes.append(exit_code(child.wait()))
    return codes


def exit_code(returncode: int | None) -> int:
    """A child's status as a shell reports it: killed by signal N is 128 + N."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


def worker_command(loglevel: str) -> list[str]:
    """How a child is started: this interpreter, `rpcache worker`, one process."""
    return [sys.executable, "-m", "streams.cli", "worker", "--loglevel", loglevel]
