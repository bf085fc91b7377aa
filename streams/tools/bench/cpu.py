"""CPU time per event: of the consuming process(es), and of PostgreSQL.

Events per second say how fast a consumer went on a shared machine; CPU
time per event says what each event cost, whatever the neighbours ran. Two
figures per throughput run, both in microseconds of CPU (user + system) per
event over the timed window:

- **the consumer's**: rpcache's worker process (with `--processes N`, the
  supervisor and every child), read from `/proc/<pid>/stat` (Linux) before
  and after the window; for the in-process consumers (the baselines, the
  ceiling), the benchmark process's own `getrusage(RUSAGE_SELF)`;
- **PostgreSQL's**: every process of the local cluster (the postmaster and
  its descendants: client backends, WAL writer, checkpointer, autovacuum…),
  found from the backend serving the benchmark's connection, except client
  backends of other databases (`pg_stat_activity`), which are other people's
  work on a shared cluster. Background processes serve every database and
  are counted whole. A process that exits inside the window takes its CPU
  time with it (none of the benchmark's connections does).

When PostgreSQL is not local (another host, a container with its own pid
namespace), its figure is None: `PostgresCpu.find` checks that the pid the
server reports is a `postgres` process whose parent is one too.

`/proc` counts in clock ticks (`SC_CLK_TCK`, 100 per second here), so a
process's figure is exact to 10 ms: under 1 % of a run of a few seconds.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streams.store.postgres import Connection

CpuTimes = dict[int, float]
"""CPU time (user + system) in seconds, by pid."""

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of a `/proc/<pid>/stat` line the benchmark uses."""

    pid: int
    comm: str
    ppid: int
    cpu_ticks: int
    """utime + stime, in clock ticks (`SC_CLK_TCK` per second)."""


def parse_proc_stat(line: str) -> ProcStat:
    """A `/proc/<pid>/stat` line: `pid (comm) state ppid … utime stime …` (proc(5)).

    `comm` may hold spaces and parentheses, so the fields after it are split
    from the last `)`: utime and stime are fields 14 and 15.
    """
    head, _, tail = line.rpartition(")")
    pid, _, comm = head.partition(" (")
    rest = tail.split()
    return ProcStat(int(pid), comm, int(rest[1]), int(rest[11]) + int(rest[12]))


def read_stat(pid: int) -> ProcStat | None:
    """The stat of `pid`; None when it does not exist (any more)."""
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Direct children of `pid`, whichever of its threads started them; none when gone."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_cpu(root: int) -> CpuTimes:
    """CPU seconds of `root` and all its descendants, by pid (absent ones skipped)."""
    times: CpuTimes = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        stat = read_stat(pid)
        if stat is None or pid in times:
            continue
        times[pid] = stat.cpu_ticks / CLOCK_TICKS_PER_S
        pending += children(pid)
    return times


def cpu_delta(
    before: Mapping[int, float], after: Mapping[int, float], exclude: Iterable[int] = ()
) -> float:
    """CPU seconds spent between two samples by the processes alive at the second.

    A process that appeared in between counts whole (all its time is inside
    the window); one gone by the second sample counts nothing; `exclude`d
    pids never count.
    """
    skip = set(exclude)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in skip)


def self_cpu_s() -> float:
    """CPU seconds (user + system, every thread) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class CpuSample:
    """What the worker and PostgreSQL had spent at one moment of a run."""

    at: float
    """time.time() of the sample (seconds since the epoch)."""
    worker: CpuTimes
    postgres: CpuTimes


def window_start(samples: Sequence[CpuSample], start: float) -> CpuSample:
    """The sample that opens the window starting at `start` (seconds since the epoch):
    the latest one taken at or before it, else the first one (the window then starts
    late, and the caller counts only the events stored after that sample)."""
    before = [s for s in samples if s.at <= start]
    return before[-1] if before else samples[0]


FOREIGN_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname <> current_database()"
"""Processes serving other databases of the cluster (other people's work)."""


class PostgresCpu:
    """CPU time of the local PostgreSQL cluster serving one benchmark database."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    @classmethod
    def find(cls, conn: Connection) -> PostgresCpu | None:
        """From the backend serving `conn`; None unless it is a local `postgres` process
        whose parent (the postmaster) is one too."""
        backend = read_stat(conn.get_server_pid())
        if backend is None or backend.comm != "postgres":
            return None
        postmaster = read_stat(backend.ppid)
        if postmaster is None or postmaster.comm != "postgres":
            return None
        return cls(postmaster.pid)

    def sample(self) -> CpuTimes:
        """CPU seconds of every process of the cluster now, by pid."""
        return tree_cpu(self.postmaster)

    @staticmethod
    async def foreign(conn: Connection) -> set[int]:
        """Pids of the backends serving other databases than `conn`'s, to exclude."""
        return {int(row["pid"]) for row in await conn.fetch(FOREIGN_BACKENDS)}
