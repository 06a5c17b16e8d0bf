from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.runtime.app import build_parser
from hpcobs.exporters.runtime.cli import (
    enabled_collectors,
    int_at_least,
    parse_args,
    parse_duration,
)
from hpcobs.exporters.runtime.collector import CollectorSpec
from hpcobs.exporters.runtime.server import parse_listen_address

pytestmark = pytest.mark.unit


def _opts(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--collector.alpha.max-jobs", dest="alpha_max_jobs", type=int, default=1000)


SPECS = [
    CollectorSpec("alpha", factory=lambda a, s: None, help="alpha", add_arguments=_opts),  # type: ignore[arg-type,return-value]
    CollectorSpec("beta", factory=lambda a, s: None, help="beta", default_enabled=False),  # type: ignore[arg-type,return-value]
]


def parser() -> argparse.ArgumentParser:
    return build_parser("prog", "test", ":9946", SPECS, paths=True)


def test_defaults() -> None:
    args = parse_args(parser(), [])
    assert args.web_listen_address == ":9946"
    assert args.web_telemetry_path == "/metrics"
    assert args.path_sysfs == "/sys"
    assert args.scrape_timeout == 10.0
    assert [s.name for s in enabled_collectors(args, SPECS)] == ["alpha"]


def test_collector_flags() -> None:
    args = parse_args(parser(), ["--no-collector.alpha", "--collector.beta"])
    assert [s.name for s in enabled_collectors(args, SPECS)] == ["beta"]
    args = parse_args(parser(), ["--collector.disable-defaults"])
    assert enabled_collectors(args, SPECS) == []
    args = parse_args(parser(), ["--collector.disable-defaults", "--collector.alpha"])
    assert [s.name for s in enabled_collectors(args, SPECS)] == ["alpha"]


def test_config_file_flat_and_nested_and_flags_win(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "web.listen-address: 127.0.0.1:1234\n"
        "scrape.timeout: 2500ms\n"
        "collector:\n  beta: true\n  alpha.max-jobs: 50\n"
        "log.level: debug\n"
    )
    args = parse_args(parser(), ["--config.file", str(cfg), "--log.level", "warn"])
    assert args.web_listen_address == "127.0.0.1:1234"
    assert args.scrape_timeout == 2.5
    assert args.alpha_max_jobs == 50
    assert args.log_level == "warn"  # the flag wins
    assert [s.name for s in enabled_collectors(args, SPECS)] == ["alpha", "beta"]
    args = parse_args(parser(), ["--config.file", str(cfg), "--no-collector.beta"])
    assert [s.name for s in enabled_collectors(args, SPECS)] == ["alpha"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "web.listen-adress: x\n",
            "web.listen-adress: unknown setting (did you mean 'web.listen-address'?)",
        ),
        ("collector.beta: yes please\n", "collector.beta: must be true or false"),
        ("collector.alpha.max-jobs: many\n", "collector.alpha.max-jobs: invalid value 'many'"),
        ("log.level: loud\n", "log.level: must be one of debug, info, warn, error"),
        ("scrape.timeout: soon\n", "scrape.timeout: invalid value 'soon'"),
        ("- a\n- b\n", "must be a mapping"),
        ("web: [\n", "line 2: invalid YAML"),
    ],
)
def test_config_file_errors_name_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exc:
        parse_args(parser(), ["--config.file", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(cfg) in err and message in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(parser(), ["--config.file", str(tmp_path / "nope.yml")])
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("2h", 7200),
        ("1d", 86400),
        ("3", 3),
        ("0.25", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-1", "1m 30s", "nan", "inf", "1.5.2s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_int_at_least() -> None:
    assert int_at_least(1)("3") == 3
    assert int_at_least(0)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, not 0"):
        int_at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer: 'x'"):
        int_at_least(1)("x")


@given(st.text(max_size=30))
def test_parse_duration_never_raises_unexpectedly(text: str) -> None:
    with contextlib.suppress(argparse.ArgumentTypeError):
        assert parse_duration(text) >= 0


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9946", ("", 9946)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:9", ("::1", 9)),
        ("[::]:0", ("::", 0)),
    ],
)
def test_listen_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9946", "host", "::1:9946", "h:99999", "h:-1", "h:"])
def test_listen_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(address)


@given(st.text(max_size=40))
def test_listen_address_fuzz(address: str) -> None:
    try:
        _host, port = parse_listen_address(address)
    except ValueError:
        return
    assert 0 <= port <= 65535


def test_required_flag_may_come_from_config_file(tmp_path: Path) -> None:
    def with_required() -> argparse.ArgumentParser:
        p = parser()
        p.add_argument("--prometheus.url", dest="prometheus_url", required=True)
        return p

    cfg = tmp_path / "c.yml"
    cfg.write_text("prometheus.url: http://127.0.0.1:9090\n")
    args = parse_args(with_required(), ["--config.file", str(cfg)])
    assert args.prometheus_url == "http://127.0.0.1:9090"
    with pytest.raises(SystemExit):
        parse_args(with_required(), [])
