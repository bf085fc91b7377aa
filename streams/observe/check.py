"""`rpcache check`: is the worker alive, and do its dependencies answer?

Four checks, run concurrently, each within CHECK_TIMEOUT_S:

- heartbeat: the row of this worker (APP_ID, WORKER_ID) in
  `worker_heartbeats` was written less than HEARTBEAT_MAX_AGE_S ago, by
  PostgreSQL's clock, and the worker did not stop; with WORKER_PROCESSES=N,
  the rows `WORKER_ID-0` … `WORKER_ID-(N-1)` of all its processes. A worker
  that wrote its first beat but does not consume yet passes as "starting";
  if it stays so, its beat goes stale (the timer beats once it consumes);
- postgres, redis, kafka: a connection is made and the server answers; for
  Redis, every distinct family target (SPEC §8), each with a warning when
  its maxmemory-policy does not fit its family (`judge_policy`).
- a Redis Cluster target (`check_cluster`): one line for the cluster, then
  one per master, with its slot ranges, its replicas (synced or not) and its
  maxmemory-policy, each read from that master itself. With
  REDIS_CLUSTER_LAYOUT=design (SPEC §8's slot layout) the check FAILS when a
  family's range is served by a master whose policy does not fit the family,
  when a reshard moved part of a family's range to a master that is there for
  another family (the line names the slots, as ranges), or when slots of a
  range are served by no master (`judge_cluster`, pure).

Exit status 0 when all pass; 1 otherwise, with one line per check saying why.
It never retries and never migrates: a healthcheck must answer now, and must
not change what it looks at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis, RedisCluster

from schemas.keys import DESIGN_SLOT_RANGES, KEY_FAMILIES, ClusterLayout, format_utc
from schemas.slots import CLUSTER_SLOTS, SlotRange
from streams.cluster_masters import (
    ClusterMaster,
    cluster_masters,
    count,
    format_ranges,
    home_family,
    overlap,
    slot_ranges,
)
from streams.database import asyncpg_options
from streams.observe import heartbeat
from streams.observe.heartbeat import Heartbeat, child_worker_ids
from streams.redis_targets import KeyFamily, RedisTargets
from streams.security import kafka_options, redis_options
from streams.settings import Settings
from streams.store import heartbeats


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    warn: bool = False
    """Passes, but something is configured against the design (printed `warn`)."""

    def line(self) -> str:
        status = "FAIL" if not self.ok else "warn" if self.warn else "ok"
        return f"{status:<5} {self.name:<10} {self.detail}"


def judge_heartbeat(
    beat: Heartbeat | None, app_id: str, worker_id: str, max_age_s: float
) -> CheckResult:
    """Fresh, stale, stopped or missing; pure."""
    who = f"worker {worker_id!r} of {app_id!r}"
    if beat is None:
        return CheckResult("heartbeat", False, f"no heartbeat from {who}: is it running?")
    if beat.stopped_at is not None:
        return CheckResult(
            "heartbeat", False, f"{who} stopped at {format_utc(beat.stopped_at)} (pid {beat.pid})"
        )
    if beat.age_s > max_age_s:
        return CheckResult(
            "heartbeat",
            False,
            f"{who} is stale: last beat {beat.age_s:.1f} s ago (limit {max_age_s:g} s,"
            f" pid {beat.pid} on {beat.host}{', still starting' if beat.starting else ''})",
        )
    if beat.starting:
        return CheckResult(
            "heartbeat",
            True,
            f"{who} is starting, not consuming yet: beat {beat.age_s:.1f} s ago"
            f" (pid {beat.pid} on {beat.host})",
        )
    return CheckResult(
        "heartbeat", True, f"{who} beat {beat.age_s:.1f} s ago (pid {beat.pid} on {beat.host})"
    )


def judge_heartbeats(results: list[CheckResult]) -> CheckResult:
    """One line for the processes of one worker: ok only when every one is; pure."""
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if not r.ok]
    if failed:
        return CheckResult("heartbeat", False, "; ".join(r.detail for r in failed))
    return CheckResult(
        "heartbeat",
        True,
        f"all {len(results)} processes beat: " + "; ".join(r.detail for r in results),
    )


async def _timed(name: str, timeout_s: float, probe: Callable[[], Awaitable[str]]) -> CheckResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            detail = await probe()
    except TimeoutError:
        return CheckResult(name, False, f"no answer within {timeout_s:g} s")
    except Exception as exc:
        kind, text = type(exc).__name__, str(exc)
        return CheckResult(name, False, text if text.startswith(kind) else f"{kind}: {text}")
    return CheckResult(name, True, f"{detail} ({(time.monotonic() - started) * 1000:.0f} ms)")


async def check_postgres(
    settings: Settings, worker_ids: list[str], max_age_s: float
) -> tuple[CheckResult, CheckResult]:
    """PostgreSQL answers, and the heartbeats it holds (one connection for both)."""
    beats: dict[str, Heartbeat | None] = {}

    async def probe() -> str:
        conn = await asyncpg.connect(
            settings.database_url.get_secret_value(),
            timeout=settings.check_timeout_s,
            **asyncpg_options(settings),
        )
        try:
            version = await heartbeats.server_version(conn)
            for worker_id in worker_ids:
                try:
                    beats[worker_id] = await heartbeat.read(conn, settings.app_id, worker_id)
                except asyncpg.UndefinedTableError:
                    beats[worker_id] = None  # no worker ever migrated this database
        finally:
            await conn.close()
        return f"PostgreSQL {version}"

    pg = await _timed("postgres", settings.check_timeout_s, probe)
    if not pg.ok:
        return CheckResult("heartbeat", False, "unknown: PostgreSQL did not answer"), pg
    judged = [judge_heartbeat(b, settings.app_id, w, max_age_s) for w, b in beats.items()]
    return judge_heartbeats(judged), pg


async def check_redis(settings: Settings) -> CheckResult:
    """PING the Redis of REDIS_URL (the stack probe of the tests uses this one)."""

    async def probe() -> str:
        url = settings.redis_url.get_secret_value()
        client = Redis.from_url(
            url,
            socket_timeout=settings.check_timeout_s,
            socket_connect_timeout=settings.check_timeout_s,
            **redis_options(settings, url),
        )
        try:
            await client.ping()
            info = await client.info("server")
        finally:
            await client.aclose()
        return f"Redis {info.get('redis_version', '?')} PONG"

    return await _timed("redis", settings.check_timeout_s, probe)


POLICY_RULES: dict[KeyFamily, tuple[Callable[[str], bool], str]] = {
    "sessions": (
        lambda p: p == "noeviction",
        "session state must live out its TTL (SPEC §8: never evicted before expiry), and"
        " every key of the family has a TTL, so any volatile-* policy evicts it early too;"
        " under noeviction a full node refuses writes (OOM) and the worker waits",
    ),
    "ai": (lambda p: p.endswith("-lru"), "the design evicts old AI responses by LRU (allkeys-lru)"),
    "voice": (
        lambda p: p.endswith("-lfu"),
        "the design keeps voice clips by use frequency (allkeys-lfu)",
    ),
}
"""SPEC §8 and the design's eviction per family: (does a policy fit, why)."""


SHARED_RULE: Final[tuple[Callable[[str], bool], str]] = (
    lambda p: p.startswith("volatile-") or p == "noeviction",
    "one Redis serving session state and caches must not evict keys without a TTL"
    " (allkeys-*); a Redis per family (SPEC §8) gives each its own eviction",
)
"""A target serving sessions with a cache family: one Redis has one policy, and no
policy both keeps sessions to their expiry and evicts the caches (noeviction would
stall the worker once the caches fill it). Any volatile-* is the compromise, which
can evict session state early: readers then take it from PostgreSQL."""


def judge_policy(families: tuple[KeyFamily, ...], policy: str) -> str | None:
    """None when `policy` fits the target's families, else why not; pure.

    A target of the session family alone must be `noeviction`; one that serves
    sessions with caches is judged by `SHARED_RULE` only (evicting session state
    early is the fault that matters; LRU/LFU preferences apply to a cache's own
    target).
    """
    if "sessions" in families and len(families) > 1:
        fits_shared, why_shared = SHARED_RULE
        if fits_shared(policy):
            return None
        return f"maxmemory-policy {policy} does not fit {'+'.join(families)}: {why_shared}"
    judged = families
    for family in judged:
        fits, why = POLICY_RULES[family]
        if not fits(policy):
            return f"maxmemory-policy {policy} does not fit {family}: {why}"
    return None


# --- a Redis Cluster target: per master ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica of a master, as that master's INFO replication lists it."""

    name: str
    """`host:port`."""
    state: str
    """The master's `slaveN:…state=…`: `online` once synced and streaming; `wait_bgsave`,
    `send_bulk`… while syncing; `disconnected` when the slot map lists it but the
    master does not."""
    behind: int = 0
    """Bytes of the replication stream it has not acknowledged (master_repl_offset − offset)."""
    policy: str | None = None
    """Its own maxmemory-policy (it keeps it when promoted); None when not read."""

    @property
    def synced(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True, slots=True)
class MasterView:
    """One master of a cluster target for `rpcache check`."""

    name: str
    """`host:port`."""
    slots: tuple[SlotRange, ...]
    policy: str | None = None
    """Its maxmemory-policy; None when it did not answer."""
    replicas: tuple[ReplicaView, ...] = ()
    error: str | None = None
    """Why it did not answer."""
    version: str = ""


def _replica_text(replicas: Sequence[ReplicaView]) -> str:
    if not replicas:
        return "no replica"
    parts = []
    for r in replicas:
        how = "synced" if r.synced else f"not synced ({r.state})"
        parts.append(f"{r.name} {how}" + (f", {r.behind} bytes behind" if r.behind else ""))
    return ("replica " if len(parts) == 1 else "replicas ") + "; ".join(parts)


def _judge_master(
    name: str, families: tuple[KeyFamily, ...], layout: ClusterLayout, master: MasterView
) -> CheckResult:
    """One master's line (`judge_cluster`); pure."""
    line = f"{name}@{master.name}"
    ranges = format_ranges(master.slots)
    if master.error is not None or master.policy is None:
        return CheckResult(
            line, False, f"slots {ranges}: the master does not answer: {master.error or '?'}"
        )
    home = home_family(master.slots) if layout == "design" else None
    where = f"slots {ranges}" + (f" ({home} range)" if home else "")
    detail = f"{where}, maxmemory-policy {master.policy}, {_replica_text(master.replicas)}"
    problems: list[str] = []
    warnings: list[str] = []
    if layout == "design":
        for family in families:
            part = overlap(master.slots, DESIGN_SLOT_RANGES[family])
            if not part:
                continue
            if family != home:
                many = count(part) != 1
                problems.append(
                    f"slot{'s' if many else ''} {format_ranges(part)} of the {family} range"
                    f" ({DESIGN_SLOT_RANGES[family]}) {'are' if many else 'is'} on this {home}"
                    f" master: a reshard moved {count(part)} slot{'s' if many else ''} of"
                    f" {family} keys to a master of another family; move"
                    f" {'them' if many else 'it'} back to the {family} master"
                )
            elif why := judge_policy((family,), master.policy):
                problems.append(f"it serves the {family} range, and {why}")
    elif why := judge_policy(families, master.policy):
        warnings.append(why)
    if not master.replicas:
        warnings.append("no replica: a crash of this master loses its slots until rebuilt")
    for replica in master.replicas:
        if not replica.synced:
            warnings.append(f"replica {replica.name} is not synced ({replica.state})")
        if replica.policy is not None and replica.policy != master.policy:
            warnings.append(
                f"replica {replica.name} has maxmemory-policy {replica.policy}: promoted, it"
                " would evict by it"
            )
    if problems:
        return CheckResult(line, False, f"{detail}; " + "; ".join(problems + warnings))
    if warnings:
        return CheckResult(line, True, f"{detail}; " + "; ".join(warnings), warn=True)
    return CheckResult(line, True, detail)


def judge_cluster(
    name: str,
    families: tuple[KeyFamily, ...],
    layout: ClusterLayout,
    masters: Sequence[MasterView],
) -> list[CheckResult]:
    """The lines of a cluster target's masters, then one for slots no master serves
    (if any); pure.

    `name`: the target's check name (`redis`, `redis:sessions+ai+voice`); a
    master's line is `<name>@host:port`. Every layout: a master that did not
    answer FAILS. `hash`: a policy that does not fit the target's families
    (`judge_policy`, as for one Redis) is a warning; slots of 0–16383 served
    by no master FAIL. `design` (SPEC §8): each master is there for the family
    whose design range holds most of its slots (`home_family`); for every
    family the target serves, a master serving part of that family's range
    FAILS when it is there for another family (a reshard moved those slots:
    they are named as ranges) or when its policy does not fit the family
    (`judge_policy((family,), …)`); slots of a served family's range served by
    no master FAIL. Warnings (status ok): a master without replica, a replica
    not synced, a replica whose policy differs from its master's.
    """
    results = [_judge_master(name, families, layout, m) for m in masters]
    served = [r for m in masters for r in m.slots]
    wanted = (
        [DESIGN_SLOT_RANGES[f] for f in KEY_FAMILIES if f in families]
        if layout == "design"
        else [SlotRange(0, CLUSTER_SLOTS - 1)]
    )
    missing: list[str] = []
    for whole in wanted:
        covered = {s for r in overlap(served, whole) for s in range(r.lo, r.hi + 1)}
        gaps = slot_ranges(s for s in range(whole.lo, whole.hi + 1) if s not in covered)
        if gaps:
            family = next((f for f, r in DESIGN_SLOT_RANGES.items() if r == whole), None)
            of = f" of the {family} range" if layout == "design" and family else ""
            missing.append(f"slots {format_ranges(gaps)}{of} are served by no master")
    if missing:
        results.append(CheckResult(f"{name}:slots", False, "; ".join(missing)))
    return results


def _replicas_of(info: Mapping[str, Any], master: ClusterMaster) -> list[ReplicaView]:
    """The replicas a master's INFO (replication section) lists, with any the slot
    map lists that it does not (`disconnected`)."""
    offset = int(info.get("master_repl_offset", 0) or 0)
    views: dict[str, ReplicaView] = {}
    for key, value in info.items():
        if key.startswith("slave") and key[5:].isdigit() and isinstance(value, Mapping):
            replica = f"{value.get('ip', '?')}:{value.get('port', '?')}"
            behind = max(0, offset - int(value.get("offset", 0) or 0))
            views[replica] = ReplicaView(replica, str(value.get("state", "?")), behind)
    for listed in master.slots.replicas:
        views.setdefault(listed, ReplicaView(listed, "disconnected"))
    return sorted(views.values(), key=lambda r: r.name)


async def master_view(cluster: RedisCluster, master: ClusterMaster) -> MasterView:
    """One master's slots, policy, version and replicas (and each replica's policy),
    asked of each node alone (`target_nodes`: no redirect, no retry). A master
    that fails is a view with `error`; a replica whose policy cannot be read has
    `policy` None. Raises nothing for a Redis failure; the caller bounds the time."""
    try:
        info = await cluster.info(target_nodes=master.node)
    except Exception as exc:
        return MasterView(master.name, master.slots.slots, error=_why(exc))
    replicas = _replicas_of(info, master)
    nodes = {n.name: n for n in master.replica_nodes}

    async def policy(replica: ReplicaView) -> ReplicaView:
        node = nodes.get(replica.name)
        if node is None:
            return replica
        try:
            found = await cluster.config_get("maxmemory-policy", target_nodes=node)
        except Exception:  # a replica that does not answer: its state says enough
            return replica
        found_policy = str(found.get("maxmemory-policy", "?"))
        return ReplicaView(replica.name, replica.state, replica.behind, found_policy)

    return MasterView(
        master.name,
        master.slots.slots,
        str(info.get("maxmemory_policy", "?")),
        tuple(await asyncio.gather(*(policy(r) for r in replicas))),
        version=str(info.get("redis_version", "")),
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    kind, text = type(exc).__name__, str(exc)
    return text if text.startswith(kind) else f"{kind}: {text}"


async def check_cluster(
    name: str,
    families: tuple[KeyFamily, ...],
    cluster: RedisCluster,
    where: str,
    layout: ClusterLayout,
    timeout_s: float,
) -> list[CheckResult]:
    """A cluster target's lines: the cluster (its slot map read, within `timeout_s`),
    then every master (`master_view`, concurrently, within the same `timeout_s`:
    one that has not answered by then FAILS alone), judged by `judge_cluster`."""
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            masters = await cluster_masters(cluster)
    except Exception as exc:
        return [CheckResult(name, False, f"Redis {where}: {_why(exc)}")]

    async def bounded(master: ClusterMaster) -> MasterView:
        try:
            async with asyncio.timeout_at(deadline):
                return await master_view(cluster, master)
        except TimeoutError:
            return MasterView(
                master.name, master.slots.slots, error=f"no answer within {timeout_s:g} s"
            )

    views = list(await asyncio.gather(*(bounded(m) for m in masters)))
    version = next((v.version for v in views if v.version), "?")
    replicas = sum(len(v.replicas) for v in views)
    head = CheckResult(
        name,
        True,
        f"Redis {version} {where}: {len(views)} master{'s' if len(views) != 1 else ''},"
        f" {replicas} replica{'s' if replicas != 1 else ''}, layout {layout}"
        f" ({(time.monotonic() - started) * 1000:.0f} ms)",
    )
    return [head, *judge_cluster(name, families, layout, views)]


async def check_redis_targets(settings: Settings) -> list[CheckResult]:
    """PING every distinct Redis target (SPEC §8) and judge its eviction policy.

    One line per target, named `redis` when every family shares REDIS_URL and
    `redis:<families>` otherwise. A policy that does not fit is a warning
    (`warn`, exit status unchanged): the cache still works, it evicts wrongly.
    A cluster target is a line for the cluster and one per master
    (`check_cluster`), whose design-layout faults FAIL.
    """
    targets = RedisTargets.from_settings(
        settings,
        socket_timeout=settings.check_timeout_s,
        socket_connect_timeout=settings.check_timeout_s,
    )
    distinct = targets.distinct()

    def name_of(families: tuple[KeyFamily, ...]) -> str:
        return "redis" if len(distinct) == 1 else f"redis:{'+'.join(families)}"

    async def one(families: tuple[KeyFamily, ...], client: Redis) -> list[CheckResult]:
        name = name_of(families)
        where = targets.targets[families[0]].describe()
        policy: list[str] = []

        async def probe() -> str:
            await client.ping()
            info = await client.info("server")
            memory = await client.info("memory")
            policy.append(str(memory.get("maxmemory_policy", "?")))
            return (
                f"Redis {info.get('redis_version', '?')} PONG at {where},"
                f" maxmemory-policy {policy[0]}"
            )

        result = await _timed(name, settings.check_timeout_s, probe)
        if result.ok and policy and (why := judge_policy(families, policy[0])):
            return [CheckResult(name, True, f"{result.detail}; {why}", warn=True)]
        return [result]

    async def each(
        families: tuple[KeyFamily, ...], client: Redis | RedisCluster
    ) -> list[CheckResult]:
        if isinstance(client, RedisCluster):
            return await check_cluster(
                name_of(families),
                families,
                client,
                targets.targets[families[0]].describe(),
                targets.layouts[families[0]],
                settings.check_timeout_s,
            )
        return await one(families, client)

    try:
        found = await asyncio.gather(*(each(f, c) for f, c in distinct))
        return [result for lines in found for result in lines]
    finally:
        await targets.aclose()


async def check_kafka(settings: Settings) -> CheckResult:
    async def probe() -> str:
        admin = AIOKafkaAdminClient(
            **kafka_options(settings),
            request_timeout_ms=int(settings.check_timeout_s * 1000),
        )
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()
        brokers = len(cluster.get("brokers", []))
        return f"{brokers} broker{'s' if brokers != 1 else ''}"

    return await _timed("kafka", settings.check_timeout_s, probe)


async def run_checks(
    settings: Settings, worker_id: str | None = None, max_age_s: float | None = None
) -> list[CheckResult]:
    """heartbeat, postgres, redis, kafka — in that order."""
    worker_ids = (
        [worker_id]
        if worker_id
        else child_worker_ids(settings.worker_id, settings.worker_processes)
    )
    (beat, pg), redis, kafka = await asyncio.gather(
        check_postgres(
            settings,
            worker_ids,
            settings.heartbeat_max_age_s if max_age_s is None else max_age_s,
        ),
        check_redis_targets(settings),
        check_kafka(settings),
    )
    return [beat, pg, *redis, kafka]
