"""Wire the runtime into a daemon: flags → logging → web config → collectors → HTTP server.

def main(argv=None) -> int:
    return run_exporter("hpcobs-node-exporter", "…", ":9946", SPECS, argv)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import FrameType

from prometheus_client.metrics_core import Metric

from hpcobs.exporters.runtime.cli import (
    add_collector_flags,
    add_path_flags,
    enabled_collectors,
    exporter_parser,
    parse_args,
)
from hpcobs.exporters.runtime.collector import Collector, CollectorSpec, Services
from hpcobs.exporters.runtime.log import setup_logging
from hpcobs.exporters.runtime.memory import release_free_memory, tune_malloc
from hpcobs.exporters.runtime.scrape import ScrapeCoordinator
from hpcobs.exporters.runtime.server import ExporterServer, PostRoute, parse_listen_address
from hpcobs.exporters.runtime.webconfig import WebConfigError, load_web_config
from hpcobs.exporters.version import VERSION, build_info

log = logging.getLogger("hpcobs")


def build_parser(
    program: str, description: str, default_listen: str, specs: Sequence[CollectorSpec], paths: bool
) -> argparse.ArgumentParser:
    parser = exporter_parser(program, description, default_listen)
    if paths:
        add_path_flags(parser)
    add_collector_flags(parser, specs)
    return parser


def run_exporter(
    program: str,
    description: str,
    default_listen: str,
    specs: Sequence[CollectorSpec],
    argv: Sequence[str] | None = None,
    *,
    paths: bool = True,
    extend_parser: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse flags and serve until SIGTERM/SIGINT. Returns the process exit code."""
    parser = build_parser(program, description, default_listen, specs, paths)
    if extend_parser is not None:
        extend_parser(parser)
    args = parse_args(parser, argv)
    return serve(program, args, specs)


class CollectorStartError(Exception):
    """A collector refused its options; the daemon does not start half-blind."""


def build_collectors(
    args: argparse.Namespace, specs: Sequence[CollectorSpec], services: Services | None = None
) -> list[Collector]:
    """The enabled collectors, built from the parsed flags and the shared `services` (made here
    when not given). On a bad option, those already built are closed and CollectorStartError
    names the collector."""
    services = Services(args) if services is None else services
    collectors: list[Collector] = []
    for spec in enabled_collectors(args, specs):
        try:
            collector = spec.factory(args, services)
        except Exception as exc:  # bad options: refuse to start rather than run half-blind
            for started in collectors:
                started.close()
            services.close()
            raise CollectorStartError(f"collector {spec.name}: {exc}") from exc
        collector.name = spec.name
        collectors.append(collector)
    return collectors


def _fail(program: str, message: str) -> int:
    print(f"{program}: error: {message}", file=sys.stderr)
    return 1


def serve(
    program: str,
    args: argparse.Namespace,
    specs: Sequence[CollectorSpec],
    extra: Iterable[Callable[[], Iterable[Metric]]] = (),
    stop: threading.Event | None = None,
    routes: Sequence[PostRoute] = (),
) -> int:
    """Serve `specs`' enabled collectors (and `extra` families) on the telemetry path, and
    `routes` (POST endpoints, e.g. a webhook) beside it, until SIGTERM/SIGINT or `stop`."""
    setup_logging(args.log_level, args.log_format)
    try:
        web = load_web_config(args.web_config_file)
    except WebConfigError as exc:
        return _fail(program, str(exc))
    try:
        address = parse_listen_address(args.web_listen_address)
    except ValueError as exc:
        return _fail(program, f"--web.listen-address: {exc}")

    tune_malloc()  # before the collectors start their threads (see memory.py)
    services = Services(args)
    try:
        collectors = build_collectors(args, specs, services)
    except CollectorStartError as exc:
        return _fail(program, str(exc))

    coordinator = ScrapeCoordinator(collectors, timeout=args.scrape_timeout)
    try:
        server = ExporterServer(
            address,
            program=program,
            version=VERSION,
            coordinator=coordinator,
            extra=[build_info, *extra],
            web=web,
            telemetry_path=args.web_telemetry_path,
            max_requests=args.web_max_requests,
            max_connections=args.web_max_connections,
            idle_timeout=args.web_idle_timeout,
            read_header_timeout=args.web_read_header_timeout,
            routes=routes,
        )
    except (OSError, ValueError) as exc:
        coordinator.close()
        services.close()
        return _fail(program, f"cannot listen on {args.web_listen_address}: {exc}")

    def shutdown(signum: int, frame: FrameType | None) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=server.shutdown, daemon=True).start()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_wakeup_fd = -1
    if in_main_thread:
        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)
        # The accepting loop sleeps without a timeout; a signal that the kernel hands to
        # another thread must still wake the main thread so that its handler runs.
        previous_wakeup_fd = signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
    if stop is not None:  # embedding (tests, demo): stop when the event is set
        event = stop

        def stop_when_set() -> None:
            event.wait()
            server.shutdown()

        threading.Thread(target=stop_when_set, daemon=True).start()

    log.info(
        "listening",
        extra={
            "program": program,
            "version": VERSION,
            "address": server.url,
            "telemetry_path": args.web_telemetry_path,
            "tls": web.tls,
            "basic_auth": bool(web.users),
            "collectors": ",".join(c.name for c in collectors) or "none",
        },
    )
    # What importing and building the collectors freed goes back to the kernel (see memory.py)
    release_free_memory()
    try:
        # No poll interval: between scrapes the main thread sleeps until a connection, a
        # shutdown or a signal arrives (was 0.2 s: 5 wake-ups a second; issue 16 item 2).
        server.serve_forever()
    finally:
        if in_main_thread:
            signal.set_wakeup_fd(previous_wakeup_fd)
        server.server_close()
        coordinator.close()
        services.close()
    return 0
