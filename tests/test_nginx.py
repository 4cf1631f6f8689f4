"""deploy/nginx/: the example that puts the web front end and this service on one origin. Checked with
`nginx -t` (Debian's nginx, scripts/bootstrap puts it in .tools/bin), then run for real in front of
the service: the front end's paths reach the service (HTTP, and the live-update WebSocket upgrade
with the page's own Origin), everything else is the front end's static build."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from elevenlabs_agent.redis.server import free_port
from tests.conftest import StackFactory

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "nginx" / "elevenlabs-agent.conf"
API = "/agent-conversations/api"


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", str(REPO / ".tools" / "bin" / "nginx")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("nginx not found (PATH, /usr/sbin, .tools/bin): run scripts/bootstrap --test to install it")


def main_config(tmp: Path, site: Path) -> Path:
    """The `nginx.conf` a Debian host would have around the example (paths under `tmp`)."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = tmp / "nginx.conf"
    config.write_text(
        f"""{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
"""
    )
    return config


def nginx_test(config: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_example_passes_nginx_t(tmp_path: Path) -> None:
    checked = nginx_test(main_config(tmp_path, EXAMPLE), tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr


def test_example_routes_every_front_end_path_to_the_service() -> None:
    text = EXAMPLE.read_text()
    assert "location /agent-conversations/ {" in text
    assert re.search(r"location ~ \^/\(config\|config/health\|signed-url\)\$", text)
    assert "proxy_set_header Upgrade $http_upgrade;" in text


USERS = {"alice": "alice-password-1", "bob": "bob-password-2"}


def write_htpasswd(tmp: Path) -> Path:
    """What `htpasswd` would write, in nginx's salted-SHA-1 form (RFC 2307 {SSHA})."""
    lines = []
    for user, password in USERS.items():
        salt = os.urandom(8)
        digest = base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()
        lines.append(f"{user}:{{SSHA}}{digest}\n")
    path = tmp / "htpasswd"
    path.write_text("".join(lines))
    return path


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()}


@contextlib.contextmanager
def running_nginx(tmp: Path, upstream_port: int) -> Iterator[str]:
    """The example with only its addresses changed: upstream = the service, listen = a free port."""
    port = free_port()
    text = EXAMPLE.read_text()
    text = text.replace("server 127.0.0.1:3004", f"server 127.0.0.1:{upstream_port}")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text = text.replace("root /srv/jarek-va-ui;", f"root {tmp}/ui;")
    text = text.replace("/etc/nginx/elevenlabs-agent.htpasswd", str(write_htpasswd(tmp)))
    assert f"127.0.0.1:{upstream_port}" in text and f"127.0.0.1:{port}" in text
    (tmp / "ui").mkdir()
    (tmp / "ui" / "index.html").write_text("<!doctype html><title>jarek-va-ui</title>")
    site = tmp / "site.conf"
    site.write_text(text)
    config = main_config(tmp, site)
    checked = nginx_test(config, tmp)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [nginx_binary(), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(config), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def test_front_end_paths_work_through_the_example(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack()
    with running_nginx(tmp_path, stack.service.port) as address:
        base = f"http://{address}"
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=basic("alice")) as http:
            page = await http.get("/conversations/abc")  # a front-end route: the SPA's index.html
            assert page.status_code == 200 and "jarek-va-ui" in page.text

            health = (await http.get("/config/health")).json()
            assert health["dependencies"] == {"redis": "connected", "cursorRunner": "connected"}
            assert (await http.get("/config")).json()["success"] is True
            signed = await http.get("/signed-url")
            assert signed.status_code == 200 and "signedUrl" in signed.json(), signed.text

            created = await http.post(f"{API}/new", json={})
            assert created.status_code == 201, created.text
            conversation_id = created.json()["conversationId"]
            listed = (await http.get(f"{API}/list", params={"sortBy": "lastAccessedAt", "sortOrder": "desc"})).json()
            assert listed["pagination"]["total"] == 1

            # The page's own origin (what a browser on this nginx sends) passes the Origin check.
            url = f"ws://{address}{API}/ws?conversationId={conversation_id}"
            async with websockets.connect(url, origin=base, additional_headers=basic("alice")) as ws:  # type: ignore[arg-type]
                snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert snapshot["type"] == "agent_conversation.snapshot"
                message = {"role": "user", "content": "through nginx", "source": "text"}
                assert (await http.post(f"{API}/{conversation_id}/message", json=message)).status_code == 201
                update = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert update["type"] == "agent_conversation.updated"
                assert update["conversation"]["messages"][-1]["content"] == "through nginx"
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await websockets.connect(
                    url,
                    origin="https://elsewhere.example.com",  # type: ignore[arg-type]
                    additional_headers=basic("alice"),
                )
            assert refused.value.response.status_code == 403


async def test_example_signs_users_in_and_leaves_only_the_webhooks_public(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await make_stack(signed_url_rate_per_minute=2)
    with running_nginx(tmp_path, stack.service.port) as address:
        base = f"http://{address}"
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as stranger,
            httpx.AsyncClient(base_url=base, timeout=10, headers=basic("alice")) as alice,
        ):
            created = await alice.post(f"{API}/new", json={"conversationId": "conv-alice"})
            assert created.status_code == 201, created.text
            # Signed in: the conversations are there. Not signed in (or a wrong password): 401.
            assert [c["conversationId"] for c in (await alice.get(f"{API}/list")).json()["conversations"]] == [
                "conv-alice"
            ]
            wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:guess").decode()}
            for path in (f"{API}/list", f"{API}/conv-alice", "/config", "/config/health", "/signed-url"):
                assert (await stranger.get(path)).status_code == 401, path
                assert (await stranger.get(path, headers=wrong)).status_code == 401, path
                # A client naming itself in the identity header gets nowhere either.
                assert (await stranger.get(path, headers={"X-Forwarded-User": "alice"})).status_code == 401, path
            assert (
                await stranger.post(f"{API}/conv-alice/message", json={"role": "user", "content": "x"})
            ).status_code == 401
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await websockets.connect(f"ws://{address}{API}/ws?conversationId=conv-alice")
            assert refused.value.response.status_code == 401

            # nginx, not the client, says who it is: alice spoofing "bob" still spends alice's budget.
            for _ in range(2):
                assert (await alice.get("/signed-url")).status_code == 200
            spoofed = await alice.get("/signed-url", headers={"X-Forwarded-User": "bob"})
            assert spoofed.status_code == 429, spoofed.text
            assert (await alice.get("/signed-url", headers=basic("bob"))).status_code == 200

            # The webhooks are public, and answered by the service itself (JSON, its own secrets).
            for path in ("/agent-tools", "/agent-tools/code_task", "/callback"):
                answer = await stranger.post(path, json={"tool_name": "code_task", "requestId": "t-1"})
                assert answer.status_code in (200, 400, 401), (path, answer.text)
                assert answer.headers["content-type"].startswith("application/json"), path
            tool = await stranger.post(
                "/agent-tools",
                json={"tool_name": "code_task", "conversation_id": "conv-alice", "prompt": "through nginx"},
                headers=stack.auth,
            )
            assert tool.status_code == 200 and tool.json()["success"], tool.text
            # Metrics are not on the public side: nginx does not proxy /metrics.
            metrics = await alice.get("/metrics")
            assert "elevenlabs_agent_" not in metrics.text
