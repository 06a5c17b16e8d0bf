"""Run the exporter runtime in-process (a thread) with given collectors, for tests and benchmarks."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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
    """An hpcobs daemon (`hpcobs-node-exporter`, …) started from the venv on a free port."""

    def __init__(self, program: str, args: Sequence[str | Path], workdir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = [str(BIN / program), f"--web.listen-address={self.address}", *map(str, args)]
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(program, argv, workdir / f"{program}-{self.port}.log")
        self.url = f"http://{self.address}"

    def start(self, timeout: float = 20.0) -> ExporterProcess:
        self.process.start()

        def accepting() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        self.process.wait_ready(accepting, timeout=timeout)
        return self

    def scrape(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return resp.read().decode()

    def stop(self) -> int | None:
        return self.process.stop()


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
