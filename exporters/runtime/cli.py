"""Flags in the Prometheus exporters' style, also readable from one YAML `--config.file`.

The config file holds the same names as the flags, without the dashes, flat or nested:

    web.listen-address: "127.0.0.1:9946"
    collector:
      gpu: false
      lustre.max-jobs: 500

Flags given on the command line win over the file. Unknown keys and values of the wrong
type stop start-up with an error naming the file and the key.
"""

from __future__ import annotations

import argparse
import difflib
import platform
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcobs.exporters.runtime.collector import CollectorSpec
from hpcobs.exporters.runtime.log import FORMATS, LEVELS
from hpcobs.exporters.runtime.server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_HEADER_TIMEOUT,
)
from hpcobs.exporters.version import VERSION

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Prometheus-style duration (`30s`, `1m30s`, `500ms`, `2h`) or plain seconds → seconds."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
        return value
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 10s, 1m30s, 500ms)")
    return total


def positive_duration(text: str) -> float:
    """An argparse `type=` for durations that must be above zero (`parse_duration` allows 0)."""
    value = parse_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above zero, not {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type=` for integer flags with a lower bound (`int_at_least(1)`: N ≥ 1)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


class ConfigFileError(ValueError):
    """A bad `--config.file`; one line naming the file and the key."""


def version_text(program: str) -> str:
    return (
        f"{program}, version {VERSION}\n"
        f"  python: {platform.python_implementation()} {platform.python_version()}\n"
        f"  platform: {sys.platform}/{platform.machine()}\n"
    )


class VersionAction(argparse.Action):
    """`--version`: print version and build info verbatim (argparse's own re-wraps lines)."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any
    ) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="print version and build information, then exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        sys.stdout.write(version_text(parser.prog))
        parser.exit(0)


def exporter_parser(program: str, description: str, default_listen: str) -> argparse.ArgumentParser:
    """The flags every hpcobs daemon shares."""
    parser = argparse.ArgumentParser(prog=program, description=description, allow_abbrev=False)
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        help="YAML file with any of these flags (without dashes); flags win",
    )
    web = parser.add_argument_group("web")
    web.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        default=default_listen,
        metavar="ADDR",
        help=f"address to listen on (default {default_listen})",
    )
    web.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        metavar="FILE",
        help="exporter-toolkit web config (TLS, basic auth)",
    )
    web.add_argument(
        "--web.telemetry-path",
        dest="web_telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path under which to expose metrics (default /metrics)",
    )
    web.add_argument(
        "--web.max-requests",
        dest="web_max_requests",
        type=int,
        default=40,
        metavar="N",
        help="maximum concurrent requests, 0 for no limit (default 40)",
    )
    web.add_argument(
        "--web.max-connections",
        dest="web_max_connections",
        type=int_at_least(1),
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="maximum open connections; more are answered 503 and closed "
        f"(default {DEFAULT_MAX_CONNECTIONS})",
    )
    web.add_argument(
        "--web.idle-timeout",
        dest="web_idle_timeout",
        type=positive_duration,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="DURATION",
        help="close a keep-alive connection when no request starts within this time "
        f"(default {DEFAULT_IDLE_TIMEOUT:g}s)",
    )
    web.add_argument(
        "--web.read-header-timeout",
        dest="web_read_header_timeout",
        type=positive_duration,
        default=DEFAULT_READ_HEADER_TIMEOUT,
        metavar="DURATION",
        help="close a connection whose request line and headers take longer than this "
        f"(default {DEFAULT_READ_HEADER_TIMEOUT:g}s)",
    )
    web.add_argument(
        "--scrape.timeout",
        dest="scrape_timeout",
        type=parse_duration,
        default=10.0,
        metavar="DURATION",
        help="deadline for all collectors of one scrape (default 10s; Prometheus' "
        "scrape-timeout header lowers it)",
    )
    add_logging_flags(parser)
    return parser


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """`--log.level` and `--log.format`, as every hpcobs program takes them."""
    logs = parser.add_argument_group("logging")
    logs.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    logs.add_argument("--log.format", dest="log_format", choices=FORMATS, default="logfmt")


def add_path_flags(parser: argparse.ArgumentParser) -> None:
    paths = parser.add_argument_group("paths")
    paths.add_argument(
        "--path.procfs",
        dest="path_procfs",
        default="/proc",
        metavar="DIR",
        help="procfs mountpoint (default /proc)",
    )
    paths.add_argument(
        "--path.sysfs",
        dest="path_sysfs",
        default="/sys",
        metavar="DIR",
        help="sysfs mountpoint (default /sys)",
    )
    paths.add_argument(
        "--path.rootfs",
        dest="path_rootfs",
        default="/",
        metavar="DIR",
        help="root filesystem mountpoint (default /)",
    )


def add_collector_flags(parser: argparse.ArgumentParser, specs: Sequence[CollectorSpec]) -> None:
    """`--collector.<name>` / `--no-collector.<name>`, `--collector.disable-defaults`, options."""
    group = parser.add_argument_group("collectors")
    group.add_argument(
        "--collector.disable-defaults",
        dest="collector_disable_defaults",
        action="store_true",
        help="enable only the collectors named explicitly",
    )
    for spec in specs:
        state = "enabled" if spec.default_enabled else "disabled"
        group.add_argument(
            f"--collector.{spec.name}",
            dest=f"collector_{spec.name}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{spec.help} (default: {state})",
        )
        spec.add_arguments(parser.add_argument_group(f"collector {spec.name}"))


def enabled_collectors(
    args: argparse.Namespace, specs: Sequence[CollectorSpec]
) -> list[CollectorSpec]:
    chosen = []
    for spec in specs:
        flag = getattr(args, f"collector_{spec.name}", None)
        default = spec.default_enabled and not getattr(args, "collector_disable_defaults", False)
        if default if flag is None else flag:
            chosen.append(spec)
    return chosen


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse flags, taking defaults from `--config.file` when given. Exits 2 on errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config.file", dest="config_file")
    known, _ = pre.parse_known_args(argv)
    if known.config_file:
        try:
            defaults = config_file_defaults(parser, Path(known.config_file))
        except ConfigFileError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        parser.set_defaults(**defaults)
        for action in parser._actions:  # a required flag may come from the file instead
            if action.dest in defaults:
                action.required = False
    return parser.parse_args(argv)


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_file_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """Map a YAML config file onto argparse destinations, validating names and types."""
    import yaml  # only with --config.file: a daemon without one does not load it (issue 16)

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise ConfigFileError(
            f"{path}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigFileError(f"{path}: the config file must be a mapping of flag names to values")
    actions = {
        opt[2:]: action
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and not opt.startswith("--no-")
    }
    actions.pop("config.file", None)
    actions.pop("help", None)
    actions.pop("version", None)
    out: dict[str, Any] = {}
    for key, value in _flatten(doc).items():
        action = actions.get(key)
        if action is None:
            hint = difflib.get_close_matches(key, list(actions), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigFileError(f"{path}: {key}: unknown setting{extra}")
        out[action.dest] = _convert(path, key, action, value)
    return out


def _convert(path: Path, key: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{path}: {key}: must be true or false, not {value!r}")
        return value
    if isinstance(value, list | dict):
        raise ConfigFileError(
            f"{path}: {key}: must be a single value, not a {type(value).__name__}"
        )
    converted: Any = value
    if action.type is not None and callable(action.type):
        try:
            converted = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigFileError(f"{path}: {key}: invalid value {value!r}: {exc}") from exc
    elif value is not None:
        converted = str(value)
    if action.choices is not None and converted not in action.choices:
        raise ConfigFileError(
            f"{path}: {key}: must be one of {', '.join(map(str, action.choices))}, not {value!r}"
        )
    return converted
