"""Run the exporter runtime in-process (a thread) with given collectors, for tests and benchmarks."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from hpcobs.exporters.runtime.collector import Collector
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.runtime.server import ExporterServer
from hpcobs.exporters.runtime.webconfig import WebConfig
from hpcobs.exporters.version import build_info

from harness.servers import ManagedProcess, free_port


class Running:
    """An ExporterServer on 127.0.0.1 (ephemeral port) serving in a background thread."""

    def __init__(
        self, collectors: list[Collector], web: WebConfig | None = None, timeout: float = 1.0
    ) -> None:
        self.coord = ScrapeCoordinator(collectors, timeout=timeout)
        self.server = ExporterServer(
            ("127.0.0.1", 0),
            program="test-exporter",
            version="1.2.3",
            coordinator=self.coord,
            extra=[build_info],
            web=web,
        )
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.coord.close()
        self.thread.join()

    def get(
        self,
        path: str,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if context is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def basic_header(user: str, password: str) -> dict[str, str]:
    """An `Authorization: Basic` header."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- hpcobs daemons as real processes -----------------------------------------------------

BIN = Path(sys.executable).parent


class ExporterProcess:
    """An hpcobs daemon (`hpcobs-node-exporter`, …) started from the venv on a free port.

    `command` replaces the program's path as what is run (e.g. a launcher that fakes a library
    first); `args` may still be extended before `launch()`. Ready when the port accepts (which
    holds for TLS listeners too)."""

    def __init__(
        self,
        program: str,
        args: Sequence[str | Path],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str | Path] | None = None,
    ) -> None:
        self.name = program
        self.args = [str(a) for a in args]
        self.command = [str(c) for c in command] if command is not None else [str(BIN / program)]
        self.env = env
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.process: ManagedProcess | None = None

    def launch(self) -> ExporterProcess:
        """Start the process without waiting (start several, then `wait_ready()` each)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [*self.command, f"--web.listen-address={self.address}", *self.args]
        log = self.workdir / f"{self.name}-{self.port}.log"
        self.process = ManagedProcess(self.name, argv, log, env=self.env)
        self.process.start()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.process is not None, "launch() first"

        def accepting() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        self.process.wait_ready(accepting, timeout=timeout)

    def start(self, timeout: float = 20.0) -> ExporterProcess:
        self.launch()
        self.wait_ready(timeout)
        return self

    def scrape(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return resp.read().decode()

    def stop(self) -> int | None:
        return None if self.process is None else self.process.stop()


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start hpcobs daemons: `exporter_factory("hpcobs-node-exporter", "--collector.disable-defaults")`;
    each binds 127.0.0.1 on a free port and is stopped by PID at teardown."""
    started: list[ExporterProcess] = []

    def make(program: str, *args: str | Path, start: bool = True) -> ExporterProcess:
        proc = ExporterProcess(program, args, tmp_path / "exporters")
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in reversed(started):
        proc.stop()
