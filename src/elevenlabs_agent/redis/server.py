"""Run a local `redis-server` process: the embedded default of `serve`, the demo, and the tests.

One implementation for all three, so the tests exercise exactly what an operator runs. The tests
also start a local Redis Cluster (`RedisClusterServers`) and a Sentinel (`RedisSentinelServer`) with
the same class underneath.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import redis


class RedisServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    """Something listens on this TCP port (Linux: /proc/net/tcp, state 0A = LISTEN)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(r.split()[1].endswith(suffix) and r.split()[3] == "0A" for r in rows):
            return True
    return False


def free_cluster_port(attempts: int = 200) -> int:
    """A free loopback port whose cluster bus port (+10000) is free too, as a cluster node needs."""
    for _ in range(attempts):
        port = random.randint(20_000, 55_535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RedisServerError("no free port pair for a cluster node")


@dataclass(frozen=True)
class ServerTls:
    """TLS for a RedisServer: its certificate and key, the CA its clients trust (and that signs client
    certificates), and, with `client_cert`/`client_key`, client certificates required (`tls-auth-clients`)."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    def args(self) -> list[str]:
        return [
            *("--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca)),
            *("--tls-auth-clients", "yes" if self.client_cert else "no"),
        ]

    def client_options(self) -> dict[str, str]:
        """redis-py's ssl_* options (also URL query options) of a client this server accepts."""
        options = {"ssl_ca_certs": str(self.ca)}
        if self.client_cert and self.client_key:
            options |= {"ssl_certfile": str(self.client_cert), "ssl_keyfile": str(self.client_key)}
        return options


class RedisServer:
    """A redis-server on 127.0.0.1 with its data (AOF) in `directory`; with `tls`, it listens for
    TLS only (`tls-port`), and `url` is a `rediss://` URL carrying the CA (and client certificate).

    `appendfsync="always"` makes a write durable before Redis answers it (a callback we acknowledged
    survives a Redis crash); "everysec" can lose the last second of writes.

    `stop()` and `start()` can be called again: the data directory survives, as after a real restart.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        appendonly: bool = True,
        binary: str | None = None,
        *,
        cluster: bool = False,
        extra_args: Sequence[str] = (),
        appendfsync: str = "everysec",
        tls: ServerTls | None = None,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.appendfsync = appendfsync
        self.port = port or (free_cluster_port() if cluster else free_port())
        self.appendonly = appendonly
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.binary = binary or shutil.which("redis-server")
        if self.binary is None:
            raise RedisServerError("redis-server is not installed (see README: scripts/bootstrap installs it)")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?" + urlencode(self.tls.client_options(), quote_via=quote)
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def _args(self) -> list[str]:
        assert self.binary is not None
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            *(("--port", "0", "--tls-port", str(self.port)) if self.tls else ("--port", str(self.port))),
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.log_path),
        ]
        if self.cluster:
            # nodes.conf lives in --dir: a restarted node rejoins its cluster with its slots.
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]
        if self.tls is not None:
            args += self.tls.args()
        return [*args, *self.extra_args]

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = self._args()
        # Own session: a Ctrl-C meant for `serve` must not stop Redis under the draining service.
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        tls: dict[str, Any] = {"ssl": True, **self.tls.client_options()} if self.tls else {}
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5, **tls)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisServerError(f"redis-server exited with {self.process.returncode}; see {self.log_path}")
                # Connect only once it listens: a connection to a port nobody listens on yet, in the
                # ephemeral range, can be given that same port as its source and talk to itself
                # (TCP self-connect: our own HELLO read back as the reply).
                try:
                    if _listening(self.port) and client.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError("redis-server did not answer PING in time")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: redis flushes the AOF and exits)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Stop abruptly, as a crash would (SIGKILL)."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class RedisClusterServers:
    """A local Redis Cluster: `masters` cluster-enabled redis-servers on free loopback ports (no
    replicas), each with its data in a subdirectory of `directory`, joined with
    `redis-cli --cluster create`. Meant for tests and trying the cluster URL out."""

    def __init__(
        self, directory: Path, masters: int = 3, appendonly: bool = False, tls: ServerTls | None = None
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.directory = directory
        self.tls = tls
        # With TLS the nodes also speak it among themselves (cluster bus) and announce their TLS port.
        extra = ("--tls-cluster", "yes") if tls else ()
        self.nodes = [
            RedisServer(directory / f"node-{i}", appendonly=appendonly, cluster=True, tls=tls, extra_args=extra)
            for i in range(masters)
        ]
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError("redis-cli is not installed (it comes with redis-server: see scripts/bootstrap)")
        self.cli = cli

    @property
    def url(self) -> str:
        """The service's cluster URL: every node is a startup node."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        if self.tls is not None:
            return f"rediss+cluster://{hosts}?" + urlencode(self.tls.client_options(), quote_via=quote)
        return f"redis+cluster://{hosts}"

    def _cli_tls(self) -> list[str]:
        if self.tls is None:
            return []
        args = ["--tls", "--cacert", str(self.tls.ca)]
        if self.tls.client_cert and self.tls.client_key:
            args += ["--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
        return args

    def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [
                    self.cli,
                    *self._cli_tls(),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if create.returncode != 0:
                raise RedisServerError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}{create.stderr}")
            self.wait_ok(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node says `cluster_state:ok` and knows every other node."""
        deadline = time.monotonic() + timeout
        tls: dict[str, Any] = {"ssl": True, **self.tls.client_options()} if self.tls else {}
        clients = [
            redis.Redis(host="127.0.0.1", port=n.port, socket_connect_timeout=0.5, socket_timeout=1, **tls)
            for n in self.nodes
        ]
        try:
            while True:
                try:
                    if all(self._node_ready(c) for c in clients):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError("the cluster did not reach cluster_state:ok in time")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def _node_ready(self, client: redis.Redis) -> bool:
        info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_slots_ok") == "16384"
            and fields.get("cluster_known_nodes") == str(len(self.nodes))
        )

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)


class RedisSentinelServer(RedisServer):
    """A redis-sentinel (`redis-server <conf> --sentinel`) on a free loopback port, monitoring the
    master at `master_port` under `service_name` (quorum 1)."""

    def __init__(self, directory: Path, master_port: int, service_name: str = "mymaster") -> None:
        super().__init__(directory, appendonly=False)
        self.master_port = master_port
        self.service_name = service_name

    @property
    def url(self) -> str:
        """The service's Sentinel URL for this sentinel and its one monitored master."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service_name}"

    def _args(self) -> list[str]:
        assert self.binary is not None
        # Sentinel rewrites its configuration file as it learns: it must be a writable file.
        config = self.directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.directory}",
                    f"logfile {self.log_path}",
                    "protected-mode no",
                    f"sentinel monitor {self.service_name} 127.0.0.1 {self.master_port} 1",
                    f"sentinel down-after-milliseconds {self.service_name} 5000",
                    "",
                ]
            )
        )
        return [self.binary, str(config), "--sentinel", *self.extra_args]
