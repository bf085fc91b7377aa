"""One settings object, read once from the environment.

Every field is an environment variable of the same name in upper case (see the
README's configuration table). URLs that may carry passwords are `SecretStr`,
so they never show up in a repr, a log line or a traceback.
"""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.keys import ClusterLayout
from streams.paths import data_home


class Settings(BaseSettings):
    """rpcache configuration; build it with `get_settings()`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # --- SPEC §1 -----------------------------------------------------------
    kafka_bootstrap_servers: str = "localhost:9092"
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_replica_url: SecretStr | None = None
    redis_sessions_url: SecretStr | None = None
    """SPEC §8: the Redis target of sessions, user state, metrics, stats and rpcache's own
    keys (default REDIS_URL); `redis://`, `rediss://`, `redis+sentinel://` or
    `redis+cluster://` (redis_targets.py)."""
    redis_ai_url: SecretStr | None = None
    """The Redis target of `ai_response:` keys (default REDIS_URL)."""
    redis_voice_url: SecretStr | None = None
    """The Redis target of `voice:` keys (default REDIS_URL)."""
    redis_cluster_layout: ClusterLayout = "hash"
    """Keys on Redis Cluster targets (SPEC §8): `hash`, the SPEC §4 keys spread by their
    own hash; `design`, each family's keys tagged into its slot range
    (`schemas.keys.layout_key`). Ignored by other targets."""
    database_url: SecretStr = SecretStr("postgresql://postgres@localhost:5432/rpcache")
    topic_prefix: str = "roleplay."
    business_tz: str = "UTC"
    daily_session_quota: int = Field(50, ge=0)

    # --- secured servers (streams/security.py; README "Secured servers") ----------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka's `security.protocol`."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """Kafka's `sasl.mechanism` (with SASL_PLAINTEXT / SASL_SSL)."""
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    """PEM file of the CAs that sign the brokers' certificates (default: the system's)."""
    kafka_ssl_certfile: str | None = None
    """Client certificate (PEM) for mutual TLS, with KAFKA_SSL_KEYFILE."""
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    """Verify that the broker's certificate names the host connected to."""
    redis_ssl_ca_certs: str | None = None
    """With a `rediss://` URL: PEM file of the CAs that sign Redis' certificate."""
    redis_ssl_certfile: str | None = None
    redis_ssl_keyfile: str | None = None
    redis_ssl_check_hostname: bool = True

    # --- pipeline ----------------------------------------------------------
    app_id: str = "rpcache"
    topic_partitions: int = Field(4, ge=1)
    max_event_bytes: int = Field(1_048_576, ge=1024)
    voice_max_audio_bytes: int = Field(716_800, ge=1)
    """Decoded audio of one voice clip; base64 of 700 KiB still fits MAX_EVENT_BYTES."""
    max_clock_skew_s: float = Field(300.0, ge=0)
    """An event whose occurred_at is later than now + this is dead-lettered
    (`occurred_in_future`): producers' clocks may run ahead a little, not a year."""
    max_concurrent_sessions: int = Field(30, ge=1)
    """Capacity behind system_load = active_sessions / this (the design's phase 3)."""
    batch_max_events: int = Field(1000, ge=1)
    batch_within_ms: int = Field(20, ge=1)
    """The linger of an agent's batch (ms), as Kafka's producer `linger.ms`: a batch
    goes when it holds batch_max_events, or this long after its first event came in
    once no fetched event waits to join it (`streams.worker.linger_batching`)."""
    session_sweep_interval_s: float = Field(10.0, gt=0)
    stats_interval_s: float = Field(0.5, gt=0)
    """How often the leader looks for stats:realtime hashes to rewrite."""
    stats_refresh_s: float = Field(60.0, gt=0)
    """A stats hash is rewritten at least this often, changed or not."""
    retry_max_backoff_s: float = Field(5.0, gt=0)
    pg_pool_size: int = Field(4, ge=1)
    database_pooler: Literal["none", "transaction"] = "none"
    """What DATABASE_URL points at: PostgreSQL itself (or a session pooler), or a pooler
    in transaction mode (pgbouncer `pool_mode = transaction`): no prepared statement
    is kept between transactions (streams/database.py)."""
    kafka_session_timeout_s: float = Field(10.0, ge=6)
    """How soon a crashed worker's partitions go to another (broker minimum: 6 s)."""
    kafka_fetch_max_wait_ms: int = Field(100, ge=1)
    """Longest a fetch waits on the broker for new data (Faust's own is 1500 ms)."""

    # --- alerts (the original design's monitoring thresholds) ------------------
    alert_hit_rate_min: float = 0.70
    alert_avg_response_ms_max: float = 200.0
    alert_redis_memory_ratio_max: float = 0.90
    alert_connection_failure_rate_max: float = 0.05
    alert_connected_clients_max: int = 1000
    alert_min_samples: int = Field(20, ge=1)
    alert_interval_s: float = Field(10.0, gt=0)

    # --- recovery ------------------------------------------------------------
    auto_rebuild: bool = True
    """Rebuild Redis from PostgreSQL by itself when Redis lost its data."""
    redis_watch_interval_s: float = Field(5.0, gt=0)
    rebuild_rate: float = Field(2000.0, gt=0)
    """Keys per second of the automatic rebuild (replay takes --rate)."""
    warmup_top_n: int = Field(100, ge=1)
    warmup_on_start: bool = False

    # --- read library (streams/read/reader.py) ---------------------------------------
    read_timeout_ms: int = Field(50, ge=1)
    """Budget of one Redis read; past it the read is answered from PostgreSQL."""
    read_max_in_flight: int = Field(32, ge=1)
    """Redis round trips one reader process keeps in flight per target; further reads
    queue in the process, time not counted against Redis (streams/read/reader.py)."""
    breaker_fail_max: int = Field(5, ge=1)
    """Consecutive Redis failures or timeouts that open the reader's circuit breaker."""
    breaker_reset_s: float = Field(5.0, gt=0)
    """How long an open breaker skips Redis before one probe read tries it again."""

    # --- consumer watchdog ------------------------------------------------------
    watchdog_stall_s: float = Field(120.0, ge=0)
    """Exit (status 75) when owned partitions have lag and no progress this long; 0 = off."""
    watchdog_interval_s: float = Field(5.0, gt=0)

    # --- worker web server (Faust's own) -----------------------------------
    worker_web_enabled: bool = True
    worker_web_port: int = 6066
    worker_web_bind: str = "127.0.0.1"

    # --- worker event loop ---------------------------------------------------------
    worker_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """Event loop of `rpcache worker`: uvloop spends less CPU per event (README, Performance)."""
    worker_processes: int = Field(1, ge=1, le=64)
    """Processes `rpcache worker` runs in one consumer group (one core each; README)."""

    # --- observability (streams/observe/metrics.py, `rpcache check`, /dashboard) -------
    worker_id: str = Field(default_factory=socket.gethostname)
    """Names this worker's heartbeat row; `rpcache check` reads the row of its own."""
    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_max_age_s: float = Field(30.0, gt=0)
    """`rpcache check` fails when the worker's last heartbeat is older than this."""
    check_timeout_s: float = Field(5.0, gt=0)
    """Budget of each dependency ping of `rpcache check`."""

    # --- local stack (`rpcache stack`) -------------------------------------
    stack_dir: str = Field(default_factory=lambda: str(data_home() / "stack"))
    """Data, logs and pid files of `rpcache stack` (a relative path is taken from the
    checkout, or from the per-user home when installed: streams/paths.py)."""
    worker_data_dir: str = Field(default_factory=lambda: str(data_home() / "worker"))
    """Faust's local data directory (no tables are kept there); created with its parents."""

    @field_validator("business_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)  # raises for an unknown zone
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The business time zone: "today" for daily counters and stats keys."""
        return ZoneInfo(self.business_tz)

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        """`sasl_ssl` and `scram-sha-256` are accepted as Kafka's own tools accept them."""
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_uses_sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs"
                " KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        return self

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol.endswith("SSL")

    def secrets(self) -> list[str]:
        """Every secret value of these settings, and the passwords inside the URLs."""
        values: list[str] = []
        for name, field in self.model_dump().items():
            if isinstance(field, SecretStr):
                secret = field.get_secret_value()
                values.append(secret)
                if name.endswith("_url"):
                    parts = urlsplit(secret)
                    if parts.password:
                        values += [parts.password, unquote(parts.password)]
                    for key, found in parse_qsl(parts.query):
                        if "password" in key:
                            values.append(found)
        return [v for v in values if v]

    @property
    def kafka_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    def redacted(self) -> dict[str, object]:
        """Settings safe to log: URLs without their passwords."""
        out = self.model_dump()
        for name in (
            "redis_url",
            "redis_replica_url",
            "redis_sessions_url",
            "redis_ai_url",
            "redis_voice_url",
            "database_url",
        ):
            value = getattr(self, name)
            out[name] = _without_password(value.get_secret_value()) if value else None
        return out


def _without_password(url: str) -> str:
    """`url` with its password, and any `*password*` query value, shown as `***`."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if "password" in parts.query:
        query = "&".join(
            f"{k}=***" if "password" in k else f"{k}={v}" for k, v in parse_qsl(parts.query)
        )
        parts = parts._replace(query=query)
    return parts.geturl()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
