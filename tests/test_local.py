"""Local mode, the way a new user meets it: `./scripts/run` in a fresh copy of the repository, then the
curl it prints, then `./scripts/run tasks list` / `conversations list` - all as subprocesses.

The copy holds the repository's files (tracked and new, not ignored ones) and links the worktree's
`.venv` and `.tools` (so `scripts/bootstrap` finds everything installed and returns at once); its
`.elevenlabs-agent/` is its own. The service's Redis and its simulated cursor-runner are the ones
`scripts/run` starts: nothing here is configured. The README's ops examples run against the same
live instance (`./scripts/run ...` lines of its "Operating it" block, in order).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from elevenlabs_agent import events
from elevenlabs_agent.local import SIMULATOR_BANNER
from elevenlabs_agent.redis.server import free_port
from tests.helpers import clean_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0
CURL_LINE = re.compile(r"^\s*(curl -sS \S+/agent-tools .*)$", re.M)


def copy_repository(target: Path) -> Path:
    """The repository's files as a fresh clone would have them (plus uncommitted work), with the
    worktree's installed .venv and .tools linked in."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            destination = target / name.decode()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    # scripts/bootstrap's stamp of the installed pyproject.toml: without it, the bootstrap inside the
    # copy would reinstall the package from this temporary copy into the shared .venv, which then
    # points at a deleted directory once the test ends.
    stamp = ROOT / ".venv" / f".installed-{hashlib.sha256((ROOT / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
    if (ROOT / ".venv").exists() and not stamp.exists():
        pytest.fail("pyproject.toml changed since the last install: run scripts/bootstrap --test first")
    for linked in (".venv", ".tools"):
        if (ROOT / linked).exists():
            (target / linked).symlink_to(ROOT / linked)
    assert not (target / ".elevenlabs-agent").exists()
    return target


def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s; last: {last!r}")


@dataclass
class LocalInstance:
    """`./scripts/run` in a fresh copy: its output, its port and the CLI next to it."""

    repo: Path
    port: int
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def env(self, **extra: str) -> dict[str, str]:
        # What a user's shell has: nothing the service reads, the port this test chose.
        return clean_env(PORT=str(self.port), **extra)

    def run(self, command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A shell line, as the user types it, from the copy's root."""
        return subprocess.run(
            ["bash", "-c", command],
            cwd=cwd or self.repo,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )

    def cli_json(self, *args: str) -> Any:
        done = self.run("./scripts/run " + " ".join(args) + " --json")
        assert done.returncode == 0, done.stderr + done.stdout
        return orjson.loads(done.stdout)

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


def start_local(repo: Path, port: int, name: str) -> LocalInstance:
    stdout_path, stderr_path = repo.parent / f"{name}.stdout", repo.parent / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            ["./scripts/run"],
            cwd=repo,
            env=clean_env(PORT=str(port)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    instance = LocalInstance(repo, port, process, stdout_path, stderr_path)

    def ready() -> bool:
        assert process.poll() is None, f"scripts/run exited {process.returncode}:\n{instance.stderr}{instance.stdout}"
        return httpx.get(instance.url + "/ready", timeout=2).status_code == 200

    until(ready, "local instance ready", START_TIMEOUT)
    return instance


def stop_local(instance: LocalInstance) -> int:
    if instance.process.poll() is None:
        instance.process.send_signal(signal.SIGTERM)
    try:
        return instance.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(instance.process.pid, signal.SIGKILL)
        instance.process.wait(10)
        raise


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInstance]:
    repo = copy_repository(tmp_path_factory.mktemp("fresh") / "elevenlabs-agent")
    instance = start_local(repo, free_port(), "first")
    try:
        yield instance
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            stop_local(instance)


def printed_curl(instance: LocalInstance) -> str:
    match = CURL_LINE.search(instance.stderr)
    assert match, f"no tool call curl printed:\n{instance.stderr}"
    return match.group(1)


def test_printed_curl_completes_a_task_seen_by_the_cli(local: LocalInstance, tmp_path: Path) -> None:
    assert SIMULATOR_BANNER in local.stderr
    # Pasted into a shell somewhere else: the curl names the secret's file by its full path.
    answer = local.run(printed_curl(local), cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    reply = orjson.loads(answer.stdout)
    assert reply["success"] is True and reply["status"] == "started", reply
    task_id = reply["taskId"]

    def task_completed() -> bool:
        rows = local.cli_json("tasks", "list")
        return any(r["taskId"] == task_id and r["status"] == "completed" for r in rows)

    until(task_completed, f"task {task_id} completed in `./scripts/run tasks list`")
    conversations = local.cli_json("conversations", "list")
    assert [c["conversationId"] for c in conversations] == ["local-demo"]
    # Local mode listens on loopback only, so a browser here reads the conversation without a proxy.
    assert httpx.get(local.url + "/config", timeout=5).json()["config"]["browserAuth"] == "none"
    history = httpx.get(local.url + "/agent-conversations/api/local-demo", timeout=5).json()
    tool_message = history["conversation"]["messages"][-1]
    assert tool_message["taskId"] == task_id and tool_message["status"] == "completed", tool_message
    assert "Done: Add a health check endpoint" in tool_message["content"]
    # The table form the README shows works too, with no flag and no REDIS_URL.
    table = local.run("./scripts/run tasks list")
    assert table.returncode == 0 and task_id in table.stdout and "completed" in table.stdout, table.stderr


def test_local_secret_is_kept_private_and_never_logged(local: LocalInstance) -> None:
    secret_file = local.repo / ".elevenlabs-agent" / "webhook-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    assert secret not in local.stdout  # the logs
    assert secret not in local.stderr  # not a terminal: a file or a CI log would keep it
    started = [r for r in local.records() if r["event"] == events.SERVICE_STARTED]
    assert started and started[0]["webhookConfigured"] is True
    # The repository ignores the local state.
    for path in (".elevenlabs-agent/webhook-secret", ".elevenlabs-agent/backups/x.jsonl"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path


def test_cli_without_a_local_instance_says_how_to_start_one(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f"{ROOT}/.venv/bin/elevenlabs-agent stats"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert done.returncode == 1
    assert "no Redis to talk to" in done.stderr and "./scripts/run" in done.stderr, done.stderr


def test_second_serve_on_a_busy_port_fails_before_starting(local: LocalInstance) -> None:
    second = local.run("./scripts/run")
    assert second.returncode == 1
    assert f"port {local.port} on 127.0.0.1 is in use" in second.stderr, second.stderr
    assert events.SERVICE_STARTED not in second.stdout + second.stderr
    # The production entry too (no local mode), and it never touched the running instance.
    plain = local.run("./scripts/run serve")
    assert plain.returncode == 1 and "is in use" in plain.stderr, plain.stderr
    assert events.SERVICE_STARTED not in plain.stdout
    assert httpx.get(local.url + "/ready", timeout=5).status_code == 200


def readme_ops_commands() -> list[str]:
    """The `./scripts/run ...` lines of the README's ops examples (the block under "Operating it")."""
    text = README.read_text()
    section = text.split("## Operating it", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands and all(c.startswith("./scripts/run ") for c in commands), commands
    return commands


def test_readme_ops_examples_run_against_the_local_instance(local: LocalInstance) -> None:
    commands = readme_ops_commands()
    named = {w[1] if w[1] in {"health", "stats", "restore"} else " ".join(w[1:3]) for w in map(str.split, commands)}
    assert named == {
        "health",
        "stats",
        "tasks list",
        "sessions list",
        "conversations list",
        "tasks purge",
        "sessions purge",
        "restore",
    }
    for command in commands:
        done = local.run(command)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    # The purges' backups went where the README says, under the (ignored) state directory.
    backups = sorted(p.name for p in (local.repo / ".elevenlabs-agent" / "backups").iterdir())
    assert any(name.startswith("elevenlabs-agent-backup-tasks-") for name in backups), backups


def test_restart_keeps_the_address_the_secret_and_the_data(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "elevenlabs-agent")
    port = free_port()
    first = start_local(repo, port, "a")
    try:
        answer = first.run(printed_curl(first))
        task_id = orjson.loads(answer.stdout)["taskId"]
        until(
            lambda: any(t["status"] == "completed" for t in first.cli_json("tasks", "list")),
            "task completed",
        )
        redis_url = (repo / ".elevenlabs-agent" / "redis.url").read_text()
        secret = (repo / ".elevenlabs-agent" / "webhook-secret").read_text()
    finally:
        assert stop_local(first) == 0
    second = start_local(repo, port, "b")
    try:
        assert (repo / ".elevenlabs-agent" / "redis.url").read_text() == redis_url
        assert (repo / ".elevenlabs-agent" / "webhook-secret").read_text() == secret
        assert "shown this once" not in second.stderr and secret.strip() not in second.stderr
        assert [t["taskId"] for t in second.cli_json("tasks", "list")] == [task_id]
    finally:
        assert stop_local(second) == 0


def test_on_a_terminal_console_logs_and_the_secret_shown_once(tmp_path: Path) -> None:
    """`serve --local` on a terminal: structlog's coloured console lines (event names unchanged) and
    the generated secret shown once, on the terminal, not in any log line; LOG_FORMAT=json keeps JSON
    on a terminal."""

    def on_a_terminal(*args: str, **env: str) -> str:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "elevenlabs-agent"), "serve", *args],
            cwd=tmp_path,
            env=clean_env(PORT=str(free_port()), HOST="127.0.0.1", DRAIN_SECONDS="0", **env),
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        seen = b""
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while events.SERVICE_STARTED.encode() not in seen and time.monotonic() < deadline:
                readable, _, _ = select.select([leader], [], [], 0.5)
                if readable:
                    with contextlib.suppress(OSError):
                        seen += os.read(leader, 65536)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            os.close(leader)
        assert events.SERVICE_STARTED.encode() in seen, seen
        return seen.decode(errors="replace")

    console = on_a_terminal("--local")
    started = next(line for line in console.splitlines() if events.SERVICE_STARTED in line)
    assert not started.lstrip().startswith("{") and "\x1b[" in started, started
    secret = (tmp_path / ".elevenlabs-agent" / "webhook-secret").read_text().strip()
    shown = [line for line in console.splitlines() if secret in line]
    assert len(shown) == 1 and "shown this once" in shown[0], shown
    assert SIMULATOR_BANNER in console
    as_json = on_a_terminal(LOG_FORMAT="json")
    started = next(line for line in as_json.splitlines() if events.SERVICE_STARTED in line)
    assert orjson.loads(started.strip())["event"] == events.SERVICE_STARTED
