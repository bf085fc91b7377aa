"""A real Apache Kafka broker for the demo and the tests, without Docker.

Why this shape: the only reachable sources here are package registries, and
Apache Kafka is published to Maven Central. `kafka-pom.xml` resolves the broker
jars once into `.cache/kafka-<version>/libs`; the broker then runs from them on
the machine's Java 17 as a single KRaft node (broker and controller in one
process, no ZooKeeper). Its data directory lives under the stack directory and
survives `down`/`up`, so topics and committed offsets outlive a restart, which
the chaos tests rely on.

Beside its PLAINTEXT listener (unchanged), the broker has a SASL_SSL one on
<port + 2> (streams/tools/stack/secure.py): TLS from the stack's PEM files, PLAIN
with the user in the listener's JAAS config, and SCRAM-SHA-256/512, whose
credentials live in the KRaft metadata log: written by `kafka-storage format
--add-scram` into a new log, and added after start (Kafka's ConfigCommand over
the PLAINTEXT listener) to a log formatted before they existed. The
controller and inter-broker traffic stay PLAINTEXT.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import shutil
import socket
import ssl
import struct
import tempfile
import time
from pathlib import Path

from streams.tools.stack.common import (
    Address,
    SecureProbeError,
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
    wait_until,
)
from streams.tools.stack.secure import (
    KAFKA_SASL_MECHANISMS,
    SCRAM_ITERATIONS,
    SCRAM_MECHANISMS,
    Credentials,
    TlsPaths,
    ensure_credentials,
    ensure_tls,
    kafka_secure_address,
    load_credentials,
    scram_keys,
    scram_salted_password,
    tls_paths,
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

    @property
    def secure_address(self) -> Address:
        """The SASL_SSL listener, <port + 2>."""
        return kafka_secure_address(self.settings)

    def ports_needed(self) -> list[int]:
        return [self.address.port, self.address.port + 1, self.secure_address.port]

    def answers(self) -> bool:
        return kafka_answers(self.address)

    def secure_problem(self) -> SecureProbeError | None:
        """Each SASL mechanism authenticates `rpcache` over TLS and lists the broker."""
        creds = load_credentials(self.settings)
        for mechanism in KAFKA_SASL_MECHANISMS:
            try:
                kafka_sasl_probe(self.secure_address, mechanism, creds, tls_paths(self.settings).ca)
            except SecureProbeError as exc:
                return exc
        return None

    def pid(self) -> int | None:
        pid = read_pid(self.pid_path)
        if pid is None or not pid_alive(pid) or not process_matches(pid, str(self.config_path)):
            return None
        return pid

    def _start(self, notes: list[str]) -> None:
        java = require_binary("java", JAVA_HINT)
        libs = ensure_kafka_libs(notes)
        notes += ensure_tls(self.settings)
        creds = ensure_credentials(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        config = server_properties(
            self.address.port, self.data_dir, tls_paths(self.settings), creds
        )
        _write_private(self.config_path, config)  # it holds the PLAIN password
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, libs, creds)
            notes.append(f"formatted a new KRaft log in {self.data_dir}")
        argv = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]
        argv += ["-cp", f"{libs}/*", "kafka.Kafka", str(self.config_path)]
        pid = spawn_detached(argv, log=self.log_path, cwd=self.home)
        self.pid_path.write_text(f"{pid}\n")

    def _format(self, java: str, libs: Path, creds: Credentials) -> None:
        """Write meta.properties: only once, so a restart keeps the topics.

        The SCRAM credentials go into the new log already salted, so the
        password is not on a command line.
        """
        argv = [java, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{libs}/*"]
        argv += ["kafka.tools.StorageTool", "format", "-t", new_cluster_id()]
        for mechanism in SCRAM_MECHANISMS:
            argv += ["--add-scram", scram_format_argument(mechanism, creds)]
        run([*argv, "-c", str(self.config_path)], cwd=self.home)

    def _after_ready(self, notes: list[str]) -> None:
        """Our broker's SCRAM users exist (a log formatted by an older rpcache lacks them)."""
        if self.pid() is None:
            return  # not ours: never change a server somebody else runs
        try:
            creds = load_credentials(self.settings)
        except StackError:
            return  # started by an older rpcache: `up --secure` says what to do
        missing = self._scram_refused(creds)
        if not missing:
            return
        started = time.monotonic()
        for mechanism in missing:
            self._add_scram(creds, mechanism)
        wait_until(
            lambda: not self._scram_refused(creds),
            what=f"SCRAM credentials of {creds.username!r} on {self.secure_address}",
            timeout=20,
        )
        notes.append(
            f"added {', '.join(missing)} credentials for {creds.username!r} "
            f"({time.monotonic() - started:.1f} s)"
        )

    def _scram_refused(self, creds: Credentials) -> list[str]:
        """The SCRAM mechanisms that refuse the password (none when the listener is absent)."""
        ca = tls_paths(self.settings).ca
        refused = []
        for mechanism in SCRAM_MECHANISMS:
            try:
                kafka_sasl_probe(self.secure_address, mechanism, creds, ca)
            except SecureProbeError as exc:
                if exc.kind == "auth":
                    refused.append(mechanism)
        return refused

    def _add_scram(self, creds: Credentials, mechanism: str) -> None:
        """Kafka's ConfigCommand (kafka-configs.sh) upserts one credential; idempotent.

        One mechanism per run: a KRaft broker refuses two credentials of one
        user in one request (DuplicateResourceException). The arguments,
        password included, go through a 0600 argument file of the java
        launcher (`java @file`), so they are on no command line `ps` shows.
        """
        java = require_binary("java", JAVA_HINT)
        scram = f"{mechanism}=[iterations={SCRAM_ITERATIONS},password={creds.password}]"
        args = [
            "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{kafka_libs_dir()}/*", "kafka.admin.ConfigCommand",
            "--bootstrap-server", f"127.0.0.1:{self.address.port}", "--alter",
            "--entity-type", "users", "--entity-name", creds.username,
            "--add-config", scram,
        ]  # fmt: skip
        with tempfile.TemporaryDirectory(dir=self.home) as scratch:  # 0700
            argfile = Path(scratch) / "config-command.args"
            argfile.write_text("".join(f'"{arg}"\n' for arg in args))
            run([java, f"@{argfile}"], cwd=self.home, timeout=120)


def server_properties(port: int, data_dir: Path, tls: TlsPaths, creds: Credentials) -> str:
    """The broker configuration: single node, replication factor 1 everywhere.

    Listeners: PLAINTEXT on `port` (clients, inter-broker), CONTROLLER on
    `port + 1`, SASL_SSL on `port + 2` (clients with the `rpcache` user).
    """
    secure_port = port + 2
    sasl = "listener.name.sasl_ssl"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{port + 1}",
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1},"
            f"SASL_SSL://127.0.0.1:{secure_port}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port}"
        ),
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "sasl.enabled.mechanisms": ",".join(KAFKA_SASL_MECHANISMS),
        f"{sasl}.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{creds.username}="{creds.password}";'
        ),
        f"{sasl}.scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{sasl}.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{sasl}.ssl.keystore.type": "PEM",
        f"{sasl}.ssl.keystore.location": str(tls.server_keystore),
        f"{sasl}.ssl.truststore.type": "PEM",
        f"{sasl}.ssl.truststore.location": str(tls.ca),
        f"{sasl}.ssl.client.auth": "none",
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
    header = (
        "# Generated by `rpcache stack up` (streams/tools/stack/kafka.py); edits are overwritten.\n"
    )
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def scram_format_argument(mechanism: str, creds: Credentials) -> str:
    """`--add-scram` of `kafka-storage format`, with a salted password rather than the password."""
    salt = secrets.token_bytes(16)
    salted = scram_salted_password(mechanism, creds.password, salt, SCRAM_ITERATIONS)
    b64 = base64.b64encode
    return (
        f"{mechanism}=[name={creds.username},iterations={SCRAM_ITERATIONS},"
        f'salt="{b64(salt).decode()}",saltedpassword="{b64(salted).decode()}"]'
    )


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (created 0600, never briefly wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older stack wrote it 0644
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


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


# --- the secure probe: SASL over TLS, then Metadata, over a raw socket ----------

_SASL_HANDSHAKE = 17  # v1: the SASL exchange then goes in SaslAuthenticate requests
_SASL_AUTHENTICATE = 36
_SASL_AUTHENTICATION_FAILED = 58


def _request(api_key: int, version: int, body: bytes) -> bytes:
    """A request with header v1 (the versions used here are not flexible)."""
    header = struct.pack(">hhih", api_key, version, _CORRELATION_ID, len(_CLIENT_ID))
    message = header + _CLIENT_ID + body
    return struct.pack(">i", len(message)) + message


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send a request; the response body after its correlation id."""
    sock.sendall(request)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if not 4 <= size <= 1 << 20:
        raise SecureProbeError("protocol", f"a response of {size} bytes: not a Kafka broker?")
    body = _recv_exact(sock, size)
    if struct.unpack_from(">i", body)[0] != _CORRELATION_ID:
        raise SecureProbeError("protocol", "a response to another request")
    return body[4:]


class _Reader:
    """Reads the big-endian fields of a (non-flexible) Kafka response."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def int16(self) -> int:
        return self.unpack(">h")[0]

    def int32(self) -> int:
        return self.unpack(">i")[0]

    def string(self) -> str | None:
        size = self.int16()
        if size < 0:
            return None
        self.at += size
        return self.data[self.at - size : self.at].decode(errors="replace")

    def bytes_(self) -> bytes:
        size = self.int32()
        self.at += max(size, 0)
        return self.data[self.at - max(size, 0) : self.at]


def _kafka_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _sasl_authenticate(sock: socket.socket, auth_bytes: bytes) -> bytes:
    """One SaslAuthenticate v1 round trip; the server's bytes, or SecureProbeError."""
    body = _exchange(
        sock, _request(_SASL_AUTHENTICATE, 1, struct.pack(">i", len(auth_bytes)) + auth_bytes)
    )
    reader = _Reader(body)
    error, message = reader.int16(), reader.string()
    if error == _SASL_AUTHENTICATION_FAILED:
        raise SecureProbeError("auth", f"authentication failed: {message or 'no reason given'}")
    if error != 0:
        raise SecureProbeError("protocol", f"SaslAuthenticate error {error}: {message}")
    return reader.bytes_()


def _scram_exchange(sock: socket.socket, mechanism: str, creds: Credentials) -> None:
    """The client side of RFC 5802, checking the server's signature too."""
    name = creds.username.replace("=", "=3D").replace(",", "=2C")
    nonce = secrets.token_urlsafe(18)
    client_first_bare = f"n={name},r={nonce}"
    server_first = _sasl_authenticate(sock, f"n,,{client_first_bare}".encode()).decode()
    fields = dict(part.split("=", 1) for part in server_first.split(",") if "=" in part)
    if not fields.get("r", "").startswith(nonce) or "s" not in fields or "i" not in fields:
        raise SecureProbeError("protocol", f"unexpected SCRAM server-first message ({mechanism})")
    salted = scram_salted_password(
        mechanism, creds.password, base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key, stored_key, server_key = scram_keys(mechanism, salted)
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    digest = "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"
    signature = hmac.new(stored_key, auth_message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    client_final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    server_final = _sasl_authenticate(sock, client_final.encode()).decode()
    expected = hmac.new(server_key, auth_message, digest).digest()
    if server_final != f"v={base64.b64encode(expected).decode()}":
        raise SecureProbeError("protocol", f"the broker's SCRAM signature is wrong ({mechanism})")


def kafka_sasl_probe(
    address: Address, mechanism: str, creds: Credentials, cafile: Path, timeout: float = 5.0
) -> None:
    """Authenticate over SASL_SSL and ask for the brokers; SecureProbeError says what failed.

    Checks, in order: the port accepts TCP (`unreachable`), the TLS handshake
    with `cafile` as the only trusted CA and `localhost` as the name to verify
    (`tls`), the mechanism (`config`) and the password (`auth`), and that the
    broker advertises its SASL_SSL listener at this port (`config`). Raw
    requests keep it synchronous and quiet, like `kafka_answers`.
    """
    try:
        context = ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise SecureProbeError("tls", f"cannot load the CA {cafile}: {exc}") from None
    try:
        raw = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        raise SecureProbeError(
            "unreachable", f"no SASL_SSL listener at {address} ({exc.strerror or exc})"
        ) from None
    try:
        with context.wrap_socket(raw, server_hostname=address.host) as sock:
            sock.settimeout(timeout)
            _sasl_probe_on(sock, address, mechanism, creds)
    except ssl.SSLCertVerificationError as exc:
        raise SecureProbeError(
            "tls", f"its certificate is not trusted by {cafile}: {exc.verify_message}"
        ) from None
    except (ssl.SSLError, ConnectionError) as exc:
        raise SecureProbeError("tls", f"TLS failed at {address}: {exc}") from None
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise SecureProbeError("protocol", f"{type(exc).__name__}: {exc}") from None
    finally:
        raw.close()


def _sasl_probe_on(
    sock: ssl.SSLSocket, address: Address, mechanism: str, creds: Credentials
) -> None:
    reader = _Reader(_exchange(sock, _request(_SASL_HANDSHAKE, 1, _kafka_string(mechanism))))
    error = reader.int16()
    enabled = [reader.string() or "" for _ in range(max(reader.int32(), 0))]
    if error != 0:
        raise SecureProbeError(
            "config", f"{mechanism} is not enabled (the listener offers {', '.join(enabled)})"
        )
    if mechanism == "PLAIN":
        _sasl_authenticate(sock, f"\0{creds.username}\0{creds.password}".encode())
    else:
        _scram_exchange(sock, mechanism, creds)
    metadata = _Reader(_exchange(sock, _metadata_request()))
    metadata.int32()  # throttle_time_ms
    ports = []
    for _ in range(max(metadata.int32(), 0)):
        metadata.int32()  # node_id
        metadata.string()  # host
        ports.append(metadata.int32())
        metadata.string()  # rack
    if address.port not in ports:
        raise SecureProbeError(
            "config",
            f"the broker advertises {ports or 'no broker'} on this listener, not {address.port}",
        )
