"""A real ``ovdet serve`` process on a free loopback port, for the load and browser tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_server(args: list[str], start_timeout: float = 180.0) -> Iterator[Server]:
    """Start ``python -m ovdet serve ARGS`` on 127.0.0.1 and a free port; wait until ``/v1/health``
    answers; stop it afterwards (SIGTERM, then SIGKILL)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            cmd = [sys.executable, "-m", "ovdet", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        server = Server(f"http://127.0.0.1:{port}", proc, log)
        try:
            deadline = time.time() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"the server exited with {proc.returncode}:\n{server.output()}")
                try:
                    if httpx.get(server.url + "/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise AssertionError(f"the server did not start in {start_timeout:.0f} s:\n{server.output()}")
                time.sleep(0.25)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
