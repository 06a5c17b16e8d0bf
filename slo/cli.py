"""`hpcobs-slo`: validate SLO specs, generate Prometheus rules, serve SLIs, report.

    hpcobs-slo validate SPEC…                      problems with file:line and a hint; exit 1
    hpcobs-slo rules SPEC… -o FILE                 a Prometheus rule file ('-' for stdout)
    hpcobs-slo serve --prometheus.url URL SPEC…    the daemon (:9948)
    hpcobs-slo report --prometheus.url URL SPEC…   table, --format json, --format html -o FILE

SPEC is a file or a folder of *.yaml / *.yml files (hpcobs specs or OpenSLO v1 documents).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from hpcobs.exporters.runtime.app import serve as serve_exporter
from hpcobs.exporters.runtime.cli import (
    VersionAction,
    exporter_parser,
    int_at_least,
    parse_args,
    parse_duration,
)
from hpcobs.exporters.runtime.collector import CollectorSpec
from hpcobs.exporters.runtime.log import setup_logging
from hpcobs.slo.loader import DEFAULT_MAX_BYTES, DEFAULT_MAX_SLOS, Limits, Loaded, load_specs
from hpcobs.slo.promapi import ClientConfig, PrometheusClient, QueryError
from hpcobs.slo.rules import DEFAULT_RUNBOOK_BASE, ENGINES, RuleOptions, render_chunks

PROGRAM = "hpcobs-slo"
DEFAULT_LISTEN = ":9948"
COMMANDS = {
    "validate": "check SLO spec files; print every problem with file, line and a fix hint",
    "rules": "write a Prometheus rule file (recording rules and burn-rate alerts)",
    "serve": "run the daemon: evaluate SLIs, budgets and burn rates, serve /metrics (:9948)",
    "report": "print an SLO report: table, JSON or a self-contained HTML page",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        return no_command(
            PROGRAM, "SLO specs → Prometheus rules, an SLI daemon, reports.", COMMANDS, args
        )
    command, rest = args[0], args[1:]
    try:
        if command == "validate":
            return validate_main(rest)
        if command == "rules":
            return rules_main(rest)
        if command == "serve":
            return serve_main(rest)
        return report_main(rest)
    except BrokenPipeError:
        # stdout closed early (`hpcobs-slo rules … -o - | head`): stop quietly, as a shell tool
        # killed by SIGPIPE does, and keep the interpreter's final flush from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + int(signal.SIGPIPE)


def no_command(program: str, description: str, commands: dict[str, str], args: list[str]) -> int:
    """The top level of a command-line with subcommands when `args` names none: help (also
    for no arguments at all), --version, or an error naming the commands. Returns 2 (or exits
    0 for --help/--version)."""
    top = argparse.ArgumentParser(
        prog=program,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {c:{max(map(len, commands)) + 1}} {h}" for c, h in commands.items()),
    )
    top.add_argument("--version", action=VersionAction)
    top.add_argument("command", choices=list(commands), help="see below")
    if not args:
        top.print_help(sys.stderr)
        return 2
    top.parse_args(args)  # --help, --version, or an error naming the commands
    return 2


# -- shared flags --------------------------------------------------------------------------
def add_prometheus_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    g = parser.add_argument_group(
        "Prometheus API (Prometheus, Thanos Query, Mimir, VictoriaMetrics)"
    )
    g.add_argument(
        "--prometheus.url",
        dest="prometheus_url",
        required=required,
        metavar="URL",
        help="base URL of the query API (with a path prefix such as /prometheus if any); "
        "user:password@ in it is sent as basic auth (prefer the password file: a URL shows "
        "in ps); logged with the password as ***",
    )
    g.add_argument(
        "--prometheus.bearer-token-file",
        dest="bearer_token_file",
        metavar="FILE",
        help="send the token in this file as Authorization: Bearer (re-read each query)",
    )
    g.add_argument("--prometheus.basic-auth.username", dest="basic_auth_user", metavar="USER")
    g.add_argument(
        "--prometheus.basic-auth.password-file", dest="basic_auth_password_file", metavar="FILE"
    )
    g.add_argument(
        "--prometheus.tls.ca-file",
        dest="tls_ca_file",
        metavar="FILE",
        help="CA certificates to verify the server with",
    )
    g.add_argument(
        "--prometheus.tls.cert-file",
        dest="tls_cert_file",
        metavar="FILE",
        help="client certificate (mutual TLS)",
    )
    g.add_argument("--prometheus.tls.key-file", dest="tls_key_file", metavar="FILE")
    g.add_argument(
        "--prometheus.tls.server-name",
        dest="tls_server_name",
        metavar="NAME",
        help="name to expect in the server's certificate",
    )
    g.add_argument(
        "--prometheus.tls.insecure-skip-verify",
        dest="tls_insecure",
        action="store_true",
        help="do not verify the server's certificate",
    )
    g.add_argument(
        "--prometheus.header",
        dest="headers",
        action="append",
        default=None,
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable), e.g. 'X-Scope-OrgID: hpc'",
    )
    q = parser.add_argument_group("queries")
    q.add_argument(
        "--query.timeout",
        dest="query_timeout",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="time limit of one query attempt (default 30s)",
    )
    q.add_argument(
        "--query.retries",
        dest="query_retries",
        type=int,
        default=2,
        metavar="N",
        help="retries after a connection error, timeout, 429 or 5xx (default 2)",
    )
    q.add_argument(
        "--query.retry-backoff",
        dest="query_backoff",
        type=parse_duration,
        default=0.5,
        metavar="DURATION",
        help="first pause between attempts, doubling (default 500ms)",
    )
    q.add_argument(
        "--query.concurrency",
        dest="query_concurrency",
        type=int,
        default=4,
        metavar="N",
        help="queries in flight at once (default 4)",
    )
    q.add_argument(
        "--query.settle-time",
        dest="settle",
        type=parse_duration,
        default=120.0,
        metavar="DURATION",
        help="hourly event counts of period windows are cached once their hour ended at "
        "least this long ago; later events are queried each cycle (default 2m)",
    )


def client_from_args(args: argparse.Namespace) -> PrometheusClient:
    headers = [_header(raw, "--prometheus.header") for raw in _listed(args.headers)]
    for path in (
        args.bearer_token_file,
        args.basic_auth_password_file,
        args.tls_ca_file,
        args.tls_cert_file,
        args.tls_key_file,
    ):
        if path and not os.path.isfile(path):
            raise ValueError(f"file not found: {path}")
    config = ClientConfig(
        url=args.prometheus_url,
        timeout=args.query_timeout,
        retries=max(0, args.query_retries),
        backoff=args.query_backoff,
        bearer_token_file=args.bearer_token_file,
        basic_auth_user=args.basic_auth_user,
        basic_auth_password_file=args.basic_auth_password_file,
        ca_file=args.tls_ca_file,
        cert_file=args.tls_cert_file,
        key_file=args.tls_key_file,
        server_name=args.tls_server_name,
        insecure_skip_verify=args.tls_insecure,
        headers=tuple(headers),
    )
    return PrometheusClient(config)


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("spec limits")
    g.add_argument(
        "--spec.max-bytes",
        dest="spec_max_bytes",
        type=int_at_least(1),
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help=f"refuse a spec file larger than this (default {DEFAULT_MAX_BYTES}: 1 MiB)",
    )
    g.add_argument(
        "--spec.max-slos",
        dest="spec_max_slos",
        type=int_at_least(1),
        default=DEFAULT_MAX_SLOS,
        metavar="N",
        help=f"refuse more SLOs than this in all, after expand (default {DEFAULT_MAX_SLOS})",
    )


def _load(args: argparse.Namespace, quiet_warnings: bool = False) -> Loaded:
    loaded = load_specs(args.spec, Limits(args.spec_max_bytes, args.spec_max_slos))
    for problem in loaded.problems.sorted():
        if problem.severity == "error" or not quiet_warnings:
            print(problem, file=sys.stderr)
    return loaded


def _fail(message: str) -> int:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return 1


# -- validate ------------------------------------------------------------------------------
def validate_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROGRAM} validate", description=COMMANDS["validate"])
    p.add_argument("spec", nargs="+", help="spec files or folders")
    add_spec_flags(p)
    p.add_argument(
        "--prometheus.url",
        dest="prometheus_url",
        metavar="URL",
        help="also check against this server that every latency threshold is a bucket bound",
    )
    args = p.parse_args(argv)
    loaded = _load(args)
    errors = len(loaded.problems.errors)
    if args.prometheus_url and not errors:
        from hpcobs.slo.online import check_buckets

        try:
            client = PrometheusClient(ClientConfig(url=args.prometheus_url, retries=1))
        except ValueError as exc:
            return _fail(str(exc))
        for problem in check_buckets(loaded.slos, client):
            print(problem, file=sys.stderr)
            errors += problem.severity == "error"
    if errors:
        print(f"{errors} error(s) in {len(loaded.files)} file(s)", file=sys.stderr)
        return 1
    print(
        f"{len(loaded.slos)} SLO(s) in {len(loaded.files)} file(s): OK"
        + (f", {len(loaded.problems.warnings)} warning(s)" if loaded.problems.warnings else "")
    )
    return 0


# -- rules ---------------------------------------------------------------------------------
def rules_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROGRAM} rules", description=COMMANDS["rules"])
    p.add_argument("spec", nargs="+", help="spec files or folders")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="rule file to write ('-': stdout), atomically; a replaced file keeps its mode "
        "(and owner and group where allowed), a new one gets 0666 less the umask",
    )
    add_spec_flags(p)
    p.add_argument(
        "--runbook.base-url",
        dest="runbook_base",
        default=DEFAULT_RUNBOOK_BASE,
        metavar="URL",
        help="where SLOBurnRatePage.md and SLOBurnRateTicket.md are published "
        f"(default {DEFAULT_RUNBOOK_BASE})",
    )
    p.add_argument(
        "--rules.interval",
        dest="interval",
        metavar="DURATION",
        help="evaluation interval of the generated groups (default: Prometheus' global; "
        "at most 5m)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="prometheus",
        help="the rule engine that evaluates the file: prometheus (also Thanos Ruler, Mimir, "
        "Cortex) or victoriametrics (vmalert, live and -replay: see docs/slo.md); "
        "default prometheus",
    )
    args = p.parse_args(argv)
    if args.interval:
        try:
            if not 0 < parse_duration(args.interval) <= 300:
                return _fail(
                    "--rules.interval must be between 0 and 5m: the 1d and 3d windows "
                    "sum 5m counts picked every 5 minutes"
                )
        except argparse.ArgumentTypeError as exc:
            return _fail(str(exc))
    loaded = _load(args)
    if not loaded.ok:
        return 1
    sources = [Path(f).name for f in loaded.files]
    # written group by group: the whole file's text is never held in memory
    options = RuleOptions(args.runbook_base, args.interval, args.engine)
    chunks = render_chunks(loaded.slos, options, sources)
    if args.output == "-":
        sys.stdout.writelines(chunks)
        return 0
    out = Path(args.output)
    try:
        write_atomically(out, chunks)
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc}")
    print(f"wrote {out}: {len(loaded.slos)} SLO(s)", file=sys.stderr)
    return 0


def write_atomically(path: Path, chunks: Iterable[str]) -> None:
    """Write `chunks` to a temporary file beside `path`, then rename it over `path` (so that
    Prometheus, reloading meanwhile, reads the old file or the new one, never a part).

    The new file gets the mode of the file it replaces, and its owner and group where this
    process may set them (root, or a group it is in); a new file gets 0666 less the umask,
    as `open()` would create it: never the temporary file's 0600, which the user Prometheus
    runs as could not read.
    """
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(chunks)
            f.flush()
            if old is not None:
                _chown(f.fileno(), old)
            os.fchmod(f.fileno(), mode)  # after chown, which may clear set-id bits
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _chown(fd: int, old: os.stat_result) -> None:
    st = os.fstat(fd)
    for uid, gid in ((old.st_uid, old.st_gid), (-1, old.st_gid)):
        if (uid in (-1, st.st_uid)) and gid == st.st_gid:
            return
        try:
            os.fchown(fd, uid, gid)
            return
        except OSError:  # not allowed (not root, not in the group): the mode at least
            continue


def current_umask() -> int:
    """The process' umask, read without changing it where Linux tells it (since 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once (not thread-safe)
    os.umask(mask)
    return mask


# -- serve ---------------------------------------------------------------------------------
def serve_parser() -> argparse.ArgumentParser:
    p = exporter_parser(f"{PROGRAM} serve", COMMANDS["serve"], DEFAULT_LISTEN)
    add_prometheus_flags(p, required=True)
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--eval-interval",
        "--eval.interval",
        dest="eval_interval",
        type=parse_duration,
        default=60.0,
        metavar="DURATION",
        help="time between evaluations (default 1m)",
    )
    e.add_argument(
        "--eval.timeout",
        dest="eval_timeout",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="time limit of one evaluation, retries included (default 30s)",
    )
    t = p.add_argument_group("tracing")
    t.add_argument(
        "--otlp.endpoint",
        dest="otlp_endpoint",
        metavar="URL",
        help="send a trace of each evaluation to this OTLP/HTTP collector (e.g. http://otel:4318)",
    )
    t.add_argument(
        "--otlp.header",
        dest="otlp_headers",
        action="append",
        default=None,
        metavar="'NAME: VALUE'",
        help="extra OTLP request header (repeatable)",
    )
    add_incident_flags(p)
    p.add_argument("spec", nargs="+", help="spec files or folders")
    add_spec_flags(p)
    return p


def add_incident_flags(parser: argparse.ArgumentParser) -> None:
    from hpcobs.slo.incidents import DEFAULT_MAX_ALERTNAMES, DEFAULT_MAX_BODY_BYTES, WEBHOOK_PATH

    g = parser.add_argument_group(
        f"incidents (Alertmanager's webhook at POST {WEBHOOK_PATH}, same TLS and basic auth)"
    )
    g.add_argument(
        "--incidents.state-file",
        dest="incidents_state_file",
        metavar="FILE",
        help="keep open incidents and the counts here across restarts (written atomically "
        "after each notification that changes them; default: in memory only)",
    )
    g.add_argument(
        "--incidents.max-alertnames",
        dest="incidents_max_alertnames",
        type=int_at_least(1),
        default=DEFAULT_MAX_ALERTNAMES,
        metavar="N",
        help="alertname label values kept; later ones are exported as 'other' "
        f"(default {DEFAULT_MAX_ALERTNAMES})",
    )
    g.add_argument(
        "--incidents.max-body-bytes",
        dest="incidents_max_body_bytes",
        type=int_at_least(1),
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="BYTES",
        help=f"refuse larger notifications with 400 (default {DEFAULT_MAX_BODY_BYTES}: 4 MiB)",
    )


def serve_main(argv: Sequence[str]) -> int:
    from hpcobs.slo.daemon import Engine, SLOCollector, incident_receiver
    from hpcobs.slo.evaluator import Evaluator
    from hpcobs.slo.tracing import tracer, tracer_provider

    args = parse_args(serve_parser(), argv)
    setup_logging(args.log_level, args.log_format)
    loaded = _load(args)
    if not loaded.ok:
        return 1
    try:
        client = client_from_args(args)
        otlp_headers = dict(_header(h, "--otlp.header") for h in _listed(args.otlp_headers))
        provider = tracer_provider(args.otlp_endpoint, otlp_headers)
        engine = Engine(
            Evaluator(
                loaded.slos,
                client,
                concurrency=args.query_concurrency,
                settle=args.settle,
                timeout=args.eval_timeout,
                tracer=tracer(provider),
            ),
            args.eval_interval,
        )
    except ValueError as exc:
        return _fail(str(exc))
    spec = CollectorSpec(
        name="slo",
        help="SLIs, error budgets and burn rates from the latest evaluation",
        factory=lambda _args, _services: SLOCollector(engine),
    )
    incidents, route = incident_receiver(args)
    try:
        return serve_exporter(f"{PROGRAM} serve", args, [spec, incidents], routes=[route])
    finally:
        provider.shutdown()


def _listed(value: object) -> list[str]:
    """A repeatable flag's values (a --config.file gives one string)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]  # type: ignore[attr-defined]


def _header(raw: str, flag: str) -> tuple[str, str]:
    name, sep, value = raw.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"{flag} must be 'Name: value', not {raw!r}")
    return name.strip(), value.strip()


# -- report --------------------------------------------------------------------------------
def _when(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r} (unix seconds or RFC 3339)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def report_main(argv: Sequence[str]) -> int:
    from hpcobs.slo.evaluator import Evaluator
    from hpcobs.slo.report import render_html, render_json, render_table

    p = argparse.ArgumentParser(prog=f"{PROGRAM} report", description=COMMANDS["report"])
    add_prometheus_flags(p, required=True)
    p.add_argument("--format", choices=("table", "json", "html"), default="table")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--time",
        type=_when,
        metavar="TIME",
        help="report as of this time (unix seconds or RFC 3339; default now)",
    )
    p.add_argument("--title", default="SLO report", help="HTML page title")
    p.add_argument("spec", nargs="+", help="spec files or folders")
    add_spec_flags(p)
    args = p.parse_args(argv)
    loaded = _load(args, quiet_warnings=True)
    if not loaded.ok:
        return 1
    try:
        evaluator = Evaluator(
            loaded.slos,
            client_from_args(args),
            concurrency=args.query_concurrency,
            settle=args.settle,
            timeout=max(args.query_timeout * (args.query_retries + 1), 30.0),
        )
    except ValueError as exc:
        return _fail(str(exc))
    try:
        evaluation = evaluator.evaluate(args.time)
    except QueryError as exc:  # pragma: no cover - evaluate() reports per SLO
        return _fail(str(exc))
    if args.format == "json":
        text = render_json(evaluation, evaluator)
    elif args.format == "html":
        text = render_html(evaluation, evaluator, args.title)
    else:
        text = render_table(evaluation)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _fail(f"cannot write {args.output}: {exc}")
    else:
        sys.stdout.write(text)
    if not evaluation.success:
        print(f"{PROGRAM}: some SLOs could not be evaluated (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
