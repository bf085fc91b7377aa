"""A real Apache Kafka broker for the demo and the tests, without Docker.

Why this shape: the only reachable sources here are package registries, and
Apache Kafka is published to Maven Central. `kafka-pom.xml` resolves the broker
jars once into `.cache/kafka-<version>/libs`; the broker then runs from them on
the machine's Java 17 as a single KRaft node (broker and controller in one
process, no ZooKeeper). Its data directory lives under the stack directory and
survives `down`/`up`, so topics and committed offsets outlive a restart, which
the chaos tests rely on.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import struct
import time
from pathlib import Path

from streams.stack.common import (
    Address,
    Service,
    StackError,
    address_from_hostport,
    cache_root,
    file_lock,
    pid_alive,
    process_matches,
    read_pid,
    require_binary,
    run,
    spawn_detached,
)

KAFKA_VERSION = "4.1.1"
"""The one pin of the broker version (the POM's default is only a fallback)."""

DEFAULT_PORT = 9092
JAVA_HINT = "apt-get install openjdk-17-jre-headless maven"
JVM_OPTIONS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # Kafka shuts down in its own JVM hook; log4j's hook would silence that part.
    "-Dlog4j2.shutdownHookEnabled=false",
]
POM = Path(__file__).with_name("kafka-pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("kafka-log4j2.yaml")


class KafkaServer(Service):
    """Single-node KRaft broker on 127.0.0.1:<port>, its controller on <port + 1>."""

    name = "kafka"
    start_timeout = 120.0
    stop_grace = 30.0

    @property
    def address(self) -> Address:
        first = (self.settings.kafka_servers or [f"localhost:{DEFAULT_PORT}"])[0]
        return address_from_hostport(first, DEFAULT_PORT)

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_path(self) -> Path:
        return self.home / "kafka.pid"

    def ports_needed(self) -> list[int]:
        return [self.address.port, self.address.port + 1]

    def answers(self) -> bool:
        return kafka_answers(self.address)

    def pid(self) -> int | None:
        pid = read_pid(self.pid_path)
        if pid is None or not pid_alive(pid) or not process_matches(pid, str(self.config_path)):
            return None
        return pid

    def _start(self, notes: list[str]) -> None:
        java = require_binary("java", JAVA_HINT)
        libs = ensure_kafka_libs(notes)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(server_properties(self.address.port, self.data_dir))
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, libs)
            notes.append(f"formatted a new KRaft log in {self.data_dir}")
        argv = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]
        argv += ["-cp", f"{libs}/*", "kafka.Kafka", str(self.config_path)]
        pid = spawn_detached(argv, log=self.log_path, cwd=self.home)
        self.pid_path.write_text(f"{pid}\n")

    def _format(self, java: str, libs: Path) -> None:
        """Write meta.properties: only once, so a restart keeps the topics."""
        argv = [java, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{libs}/*"]
        argv += ["kafka.tools.StorageTool", "format", "-t", new_cluster_id()]
        run([*argv, "-c", str(self.config_path)], cwd=self.home)


def server_properties(port: int, data_dir: Path) -> str:
    """The broker configuration: single node, replication factor 1 everywhere."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{port + 1}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",
        "message.max.bytes": "4194304",
        "replica.fetch.max.bytes": "4194304",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a SIGKILL the restarted controller waits for the old incarnation's
        # session to time out before the broker may register again (default 9 s).
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }
    header = "# Generated by `rpcache stack up` (streams/stack/kafka.py); edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def new_cluster_id() -> str:
    """A cluster id as `StorageTool random-uuid` makes it, without starting a JVM for it.

    Kafka's `Uuid.toString()` is URL-safe base64 of 16 random bytes without
    padding; `Uuid.randomUuid()` rejects ids that start with "-".
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_libs_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_kafka_libs(notes: list[str]) -> Path:
    """Copy the broker's jars from Maven Central once; a marker file records success."""
    libs = kafka_libs_dir()
    marker = libs.parent / "libs.complete"
    with file_lock(cache_root() / ".kafka-libs.lock"):
        if marker.is_file():
            return libs
        mvn = require_binary("mvn", JAVA_HINT)
        started = time.monotonic()
        shutil.rmtree(libs, ignore_errors=True)  # an interrupted copy may be partial
        run(
            [
                mvn, "-q", "-B", "-f", str(POM),
                f"-Dkafka.version={KAFKA_VERSION}",
                f"-Dmaven.repo.local={cache_root() / 'm2'}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            timeout=900,
        )  # fmt: skip
        if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise StackError(f"Maven finished but {libs} lacks the Kafka {KAFKA_VERSION} jar")
        marker.write_text(f"{KAFKA_VERSION}\n")
    notes.append(
        f"fetched Kafka {KAFKA_VERSION} jars with Maven in {time.monotonic() - started:.1f} s"
    )
    return libs


# --- the health probe: one Metadata request over a raw socket ---------------

_CORRELATION_ID = 0x5250  # "RP"
_CLIENT_ID = b"rpcache-stack"


def _metadata_request() -> bytes:
    """Metadata v4 (supported by Kafka 1.0 to 4.x) asking for no topic at all."""
    header = struct.pack(">hhih", 3, 4, _CORRELATION_ID, len(_CLIENT_ID)) + _CLIENT_ID
    body = struct.pack(">i?", 0, False)  # topics: empty array; allow_auto_topic_creation
    message = header + body
    return struct.pack(">i", len(message)) + message


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def kafka_answers(address: Address, timeout: float = 2.0) -> bool:
    """True when a Kafka broker at `address` lists at least one live (unfenced) broker.

    An open port is not enough: the broker accepts connections before it has
    caught up with the controller. A raw request keeps the probe synchronous
    and quiet (aiokafka logs every refused connection as an error).
    """
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_metadata_request())
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if not 12 <= size <= 1 << 20:
                return False
            body = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    correlation_id, _throttle_ms, brokers = struct.unpack_from(">iii", body)
    return bool(correlation_id == _CORRELATION_ID and brokers > 0)
