"""Redis over TLS with a private CA: a real `redis-server --tls-port`, certificates made here with the
openssl CLI. The URL's ssl_* options (redis-py's names) reach every connection the service and the
CLI open: the multiplexed client, the bulk reader and redis-py's clients (elevenlabs_agent.redis)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_sync
from redis.exceptions import ConnectionError as RedisConnectionError

from elevenlabs_agent.ops.bulk import HashReader
from elevenlabs_agent.redis.clients import connect_redis, open_redis
from elevenlabs_agent.redis.mux import MuxRedis
from elevenlabs_agent.redis.server import RedisClusterServers, RedisServer, ServerTls
from elevenlabs_agent.redis.urls import parse_redis_url
from elevenlabs_agent.sim.cursor_runner import callback_body, split_secret
from tests.conftest import StackFactory
from tests.helpers import assert_one_error_line, ok, ok_json, run_cli
from tests.serve_proc import ServeProcesses

API = "/agent-conversations/api"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions + "\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext, cwd=directory)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _make_ca(directory, "test-ca")
    # clientAuth too: cluster nodes present their certificate to each other on the cluster bus.
    server = _issue(directory, "server", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth")
    client = _issue(directory, "client", ca, "extendedKeyUsage=clientAuth")
    other_ca, _ = _make_ca(directory, "other-ca")
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


def _server(directory: Path, tls: ServerTls) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=False, tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Verifies nothing of its clients: the client verifies the server against the URL's CA."""
    yield from _server(tmp_path_factory.mktemp("redis-tls"), ServerTls(pki.server_cert, pki.server_key, pki.ca))


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Requires a client certificate signed by the CA (tls-auth-clients yes)."""
    tls = ServerTls(pki.server_cert, pki.server_key, pki.ca, pki.client_cert, pki.client_key)
    yield from _server(tmp_path_factory.mktemp("redis-mtls"), tls)


def with_ca(server: RedisServer, ca: Path) -> str:
    return f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={quote(str(ca))}"


async def _use_every_client(url: str) -> None:
    """The multiplexed client, the bulk reader and redis-py each write or read over `url`."""
    mux = MuxRedis(url, timeout=2.0)
    try:
        await mux.hset("tls:hash", mapping={"a": "1"})
        assert await mux.hgetall("tls:hash") == {"a": "1"}
    finally:
        await mux.aclose()
    reader = await HashReader.open(url)
    try:
        reader.send_reads(["tls:hash"])
        assert await reader.receive_reads(["tls:hash"]) == [("tls:hash", -1, {"a": "1"})]
    finally:
        await reader.aclose()
    client = connect_redis(url, 2.0)
    try:
        assert await client.hget("tls:hash", "a") == "1"
    finally:
        await client.aclose()


async def test_every_client_verifies_the_server_with_the_urls_ca(tls_server: RedisServer) -> None:
    await _use_every_client(tls_server.url)


async def test_client_certificates_from_the_url(mtls_server: RedisServer, pki: Pki) -> None:
    assert "ssl_certfile=" in mtls_server.url and "ssl_keyfile=" in mtls_server.url
    await _use_every_client(mtls_server.url)
    # Without a client certificate the server hangs up.
    mux = MuxRedis(with_ca(mtls_server, pki.ca), timeout=2.0)
    with pytest.raises(RedisConnectionError):
        await mux.ping()
    await mux.aclose()


@pytest.mark.parametrize("query", ["ssl_ca_certs={other_ca}", ""])
async def test_an_untrusted_server_is_a_clear_connection_error(tls_server: RedisServer, pki: Pki, query: str) -> None:
    url = f"rediss://127.0.0.1:{tls_server.port}/0?" + query.format(other_ca=quote(str(pki.other_ca)))
    mux = MuxRedis(url, timeout=2.0)
    with pytest.raises(RedisConnectionError, match=r"TLS certificate of Redis at 127\.0\.0\.1:\d+ not accepted: "):
        await mux.ping()
    await mux.aclose()
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await HashReader.open(url)


async def test_verification_mode_and_hostname_check_follow_the_url(tls_server: RedisServer, pki: Pki) -> None:
    # ssl_cert_reqs=none: no verification at all, as redis-py does it.
    await _use_every_client(f"rediss://127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=none")
    # The certificate names 127.0.0.1 only: "localhost" is refused unless ssl_check_hostname=false.
    by_name = f"rediss://localhost:{tls_server.port}/0?ssl_ca_certs={quote(str(pki.ca))}"
    mux = MuxRedis(by_name, timeout=2.0)
    with pytest.raises(RedisConnectionError, match="Hostname mismatch"):
        await mux.ping()
    await mux.aclose()
    await _use_every_client(by_name + "&ssl_check_hostname=false")


def test_cluster_and_sentinel_urls_take_the_tls_options(pki: Pki) -> None:
    ca = quote(str(pki.ca))
    cluster = parse_redis_url(f"rediss+cluster://a:1,b:2?ssl_ca_certs={ca}&ssl_cert_reqs=optional")
    assert cluster.credentials["ssl"] is True
    assert cluster.credentials["ssl_ca_certs"] == str(pki.ca)
    assert cluster.credentials["ssl_cert_reqs"] == "optional"
    node = cluster.node("a", 1)
    assert node.tls is not None and node.tls.options["ssl_ca_certs"] == str(pki.ca)
    sentinel = parse_redis_url(f"rediss+sentinel://s:26379/mymaster?sentinel_password=x&ssl_ca_certs={ca}")
    assert sentinel.tls_kwargs["ssl_ca_certs"] == str(pki.ca)
    with pytest.raises(ValueError, match="ssl_ca_certs"):
        parse_redis_url(f"redis+cluster://a:1?ssl_ca_certs={ca}")  # TLS options without TLS
    with pytest.raises(ValueError, match="ssl_ca_path"):
        parse_redis_url("rediss+cluster://a:1?ssl_ca_path=/etc/ssl/certs")  # redis-py's cluster client lacks it
    with pytest.raises(ValueError, match="ssl_no_such_option"):
        parse_redis_url("rediss+cluster://a:1?ssl_no_such_option=1")


async def test_the_service_runs_its_flows_over_tls(make_stack: StackFactory, tls_server: RedisServer) -> None:
    stack = await make_stack(redis_url=tls_server.url)
    conversation_id, eleven_id, voice = await stack.live_conversation(push=False)
    stack.runner.callback_kind = "none"
    reply = (await stack.call_tool({"conversation_id": eleven_id, "prompt": "over tls"})).json()
    url, secret = split_secret(stack.runner.received[-1]["callbackUrl"])
    assert secret is not None
    done = await stack.http.post(
        url, json=callback_body("completion", reply["taskId"]), headers={"X-Webhook-Secret": secret}
    )
    assert done.status_code == 200, done.text
    messages = (await stack.http.get(f"{API}/{conversation_id}")).json()["messages"]
    assert any(m.get("taskId") == reply["taskId"] and m.get("status") == "completed" for m in messages), messages
    await voice.close()


async def test_serve_becomes_ready_over_tls(tmp_path: Path, tls_server: RedisServer, mtls_server: RedisServer) -> None:
    processes = ServeProcesses(tmp_path, CURSOR_RUNNER_URL="http://127.0.0.1:9")
    try:
        for server in (tls_server, mtls_server):
            service = processes.new(REDIS_URL=server.url)
            health = await service.start(path="/ready")
            assert health["status"] == "pass", health
            assert health["checks"]["redis:ping"][0]["status"] == "pass", health
    finally:
        processes.kill_all()


@pytest.fixture
def stuck_tasks(tls_server: RedisServer, mtls_server: RedisServer) -> Iterator[None]:
    clients = [redis_sync.Redis.from_url(s.url, decode_responses=True) for s in (tls_server, mtls_server)]
    for client in clients:
        for n in range(3):
            client.hset(f"cursor_task:tls-{n}", mapping={"status": "pending", "createdAt": "2020-01-01T00:00:00.000Z"})
    yield
    for client in clients:
        client.delete(*(f"cursor_task:tls-{n}" for n in range(3)))
        client.close()


@pytest.mark.usefixtures("stuck_tasks")
def test_the_cli_bulk_path_and_stats_over_tls(tls_server: RedisServer, mtls_server: RedisServer) -> None:
    for server in (tls_server, mtls_server):
        report = ok_json(
            run_cli("tasks", "purge", "--older-than", "0s", "--status", "pending", "--json", redis_url=server.url)
        )
        assert (report["dryRun"], report["matched"], report["deleted"]) == (True, 3, 0), report
        assert {s["key"] for s in report["sample"]} == {f"cursor_task:tls-{n}" for n in range(3)}
        assert "cursor_task" in ok(run_cli("stats", "--json", redis_url=server.url))


def test_the_cli_names_an_untrusted_server_in_one_line(tls_server: RedisServer, pki: Pki) -> None:
    url = with_ca(tls_server, pki.other_ca)
    for command in (("tasks", "purge", "--older-than", "0s"), ("stats",)):
        line = assert_one_error_line(run_cli(*command, redis_url=url))
        assert "certificate verify failed" in line, line


@pytest.fixture(scope="module")
def tls_cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(
        tmp_path_factory.mktemp("redis-tls-cluster"), tls=ServerTls(pki.server_cert, pki.server_key, pki.ca)
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
async def test_a_cluster_over_tls_for_the_service_and_the_cli(tls_cluster: RedisClusterServers) -> None:
    url = tls_cluster.url
    assert url.startswith("rediss+cluster://") and "ssl_ca_certs=" in url
    client = connect_redis(url, 2.0)
    try:
        # Keys spread over every master: each node's connection is verified with the URL's CA.
        for n in range(30):
            await client.hset(
                f"cursor_task:tls-cluster-{n}", mapping={"status": "pending", "createdAt": "2020-01-01T00:00:00.000Z"}
            )
        assert all([await client.exists(f"cursor_task:tls-cluster-{n}") for n in range(30)])
        # The CLI: one bulk reader per master (its own TLS connection), and stats through redis-py.
        report = ok_json(
            run_cli("tasks", "purge", "--older-than", "0s", "--status", "pending", "--json", redis_url=url)
        )
        assert (report["dryRun"], report["scanned"], report["matched"]) == (True, 30, 30), report
        ok(run_cli("stats", "--json", redis_url=url))
    finally:
        await client.aclose()
    # The CLI's own client for a cluster URL (open_redis) takes the same options.
    cli_client = open_redis(url, decode_responses=True)
    try:
        assert await cli_client.hget("cursor_task:tls-cluster-0", "status") == "pending"
    finally:
        await cli_client.aclose()
