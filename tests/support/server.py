"""Shared test support, loaded as a pytest plugin by tests/conftest.py: the real server as a subprocess,
`backprop migrate` then `backprop serve --port N` (API plus its embedded worker process) on a SQLite file in
tmp_path. Every wait is bounded, and the finalizer kills whatever is still running."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 45.0  # serve gives its worker 30 s to finish gracefully


def backprop_command() -> list[str]:
    script = Path(sys.executable).with_name("backprop")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name is in parentheses and may contain spaces: the ppid follows the last ')'.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [p for p, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Server:
    """One `backprop serve` process; `stdout` lines are collected by a reader thread."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout: list[str] = []
        self.log = workdir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[str] | None = None
        self._children: set[int] = set()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*backprop_command(), "serve", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"serve-{self.port}-stdout")
        self._reader.start()
        wait_until(self._healthy, timeout=START_TIMEOUT, what=f"the server on port {self.port} to answer /healthz")
        self._children.update(descendants(self.proc.pid))

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line.rstrip("\n"))

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the server exited with code {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def printed_key(self, timeout: float = 10.0) -> str:
        def key() -> str | None:
            return next((line.strip() for line in self.stdout if line.strip().startswith("bp_live_")), None)

        return str(wait_until(key, timeout=timeout, what="serve to print an API key"))

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0)

    def stop(self) -> int:
        """SIGTERM and a bounded wait; the exit code. Kills everything if it does not stop in time."""
        assert self.proc is not None
        self._children.update(descendants(self.proc.pid))
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server did not stop within {STOP_TIMEOUT} s of SIGTERM")
        self._close_stdout()
        wait_until(lambda: not self._alive_children(), timeout=STOP_TIMEOUT, what="the worker processes to exit")
        return code

    def _close_stdout(self) -> None:
        assert self.proc is not None
        if self._reader is not None:
            self._reader.join(timeout=10)  # EOF once the server and every holder of its stdout are gone
        if (
            self.proc.stdout is not None
            and not self.proc.stdout.closed
            and not (self._reader is not None and self._reader.is_alive())
        ):
            self.proc.stdout.close()

    def _alive_children(self) -> list[int]:
        alive = []
        for pid in self._children:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        return alive

    def kill(self) -> None:
        """SIGKILL the server and every process it started (the worker runs in its own session)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._children.update(descendants(self.proc.pid))
        for pid in [*self._children, self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._close_stdout()


@pytest.fixture
def e2e_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every backprop process of a test, with its database migrated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env.update(
        BACKPROP_DATABASE_URL=f"sqlite:///{tmp_path / 'e2e.db'}",
        BACKPROP_DATA_DIR=str(tmp_path / "var"),
        BACKPROP_WORKERS="1",
        BACKPROP_POLL_SECONDS="0.1",
        BACKPROP_LOG_LEVEL="info",
    )
    result = subprocess.run(
        [*backprop_command(), "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "latest migration" in result.stdout
    return env


@pytest.fixture
def start_server(tmp_path: Path, e2e_env: dict[str, str]) -> Iterator[Callable[[], Server]]:
    """Starts servers on the test's database; whatever is still running at the end is killed."""
    servers: list[Server] = []

    def start() -> Server:
        server = Server(tmp_path, e2e_env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()
