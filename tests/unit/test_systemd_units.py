"""The systemd units in systemd/: `systemd-analyze verify` clean, hardened, exposure ≤ 2.0.

Every unit file in systemd/ is checked, whoever wrote it. `systemd-analyze verify` insists
that each ExecStart binary exists, so the units are copied into a temporary directory and
every command path that does not exist on this machine (/opt/hpcobs/bin/… on a developer's
machine) is pointed at a stub executable under the same temporary directory. Both commands
work offline: no running systemd is needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path")
UNITS = sorted(p for p in UNIT_DIR.iterdir() if p.suffix in UNIT_SUFFIXES)
SERVICES = [p for p in UNITS if p.suffix == ".service"]
OURS = ("hpcobs-node-exporter.service", "hpcobs-slurm-exporter.service", "hpcobs-slo.service")
MAX_EXPOSURE = 2.0
EXEC_KEYS = (
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "ExecReload",
    "ExecStop",
    "ExecStopPost",
    "ExecCondition",
)
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install Debian's `systemd` (scripts/bootstrap.sh)")
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value in order (systemd keys repeat; an empty value resets)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if logical:
            line = logical + " " + line
            logical = ""
        if line.endswith("\\"):
            logical = line[:-1].rstrip()
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def command_path(value: str) -> str:
    """The executable of an Exec*= value, without systemd's prefixes (-, @, :, +, !)."""
    return value.lstrip("-@:+!").split()[0]


def stage_units(tmp_path: Path) -> Path:
    """Copy every unit into tmp_path/units, with missing command paths replaced by stubs."""
    units = tmp_path / "units"
    stubs = tmp_path / "stubs"
    units.mkdir()
    stubs.mkdir()
    for unit in UNITS:
        lines = []
        for line in unit.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in EXEC_KEYS and value.strip():
                exe = command_path(value)
                if not Path(exe).exists():
                    stub = stubs / Path(exe).name
                    stub.write_text("#!/bin/sh\nexit 0\n")
                    stub.chmod(0o755)
                    line = line.replace(exe, str(stub), 1)
            lines.append(line)
        (units / unit.name).write_text("\n".join(lines) + "\n")
    return units


def test_our_units_exist() -> None:
    names = {p.name for p in UNITS}
    missing = [name for name in OURS if name not in names]
    assert not missing, f"missing unit files in systemd/: {missing}"


def test_stubbing_rewrites_only_missing_commands(tmp_path: Path) -> None:
    units = stage_units(tmp_path)
    for unit in UNITS:
        for key, values in parse_unit((units / unit.name).read_text()).get("Service", {}).items():
            if key in EXEC_KEYS:
                for value in values:
                    assert Path(command_path(value)).exists(), (unit.name, value)
    node = (units / "hpcobs-node-exporter.service").read_text()
    assert "--config.file=/etc/hpcobs/node-exporter.yml" in node  # arguments kept


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_is_clean(unit: Path, tmp_path: Path) -> None:
    units = stage_units(tmp_path)
    proc = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(units / unit.name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=units,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not output, f"systemd-analyze verify {unit.name}:\n{output}"


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_security_exposure_at_most_2(unit: Path, tmp_path: Path) -> None:
    units = stage_units(tmp_path)
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(units / unit.name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=units,
    )
    match = _EXPOSURE.search(proc.stdout)
    assert match, f"no exposure level in the output:\n{proc.stdout}\n{proc.stderr}"
    exposure = float(match.group(1))
    weak = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"{unit.name}: exposure {exposure} > {MAX_EXPOSURE}:\n{weak}"


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_hardening_settings(unit: Path) -> None:
    service = parse_unit(unit.read_text())["Service"]

    def one(key: str) -> str:
        values = service.get(key, [])
        assert values, f"{unit.name}: {key}= is not set"
        return values[-1]

    dynamic = service.get("DynamicUser", ["no"])[-1] in ("yes", "true", "1")
    user = service.get("User", ["root"])[-1]
    assert dynamic or user not in ("root", "0"), f"{unit.name}: runs as root"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") in ("yes", "read-only", "tmpfs")
    assert one("PrivateTmp") == "yes"
    assert "CapabilityBoundingSet" in service and not service["CapabilityBoundingSet"], (
        f"{unit.name}: CapabilityBoundingSet must be empty (no capabilities)"
    )
    assert "@system-service" in service.get("SystemCallFilter", [])
    families = " ".join(service.get("RestrictAddressFamilies", [])).split()
    assert families, f"{unit.name}: RestrictAddressFamilies= is not set"
    assert set(families) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}, families
    config = " ".join(service.get("ExecStart", []) + service.get("EnvironmentFile", []))
    assert "/etc/hpcobs/" in config, f"{unit.name}: configuration is not read from /etc/hpcobs/"


_SIZE = re.compile(r"(\d+)([KMGT]?)")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_tasks_and_memory_are_capped(unit: Path) -> None:
    """A flood of connections (a thread each) or a leak stays inside the unit: TasksMax= and
    MemoryMax= are set to finite, plausible values (not `infinity`, not a percentage)."""
    service = parse_unit(unit.read_text())["Service"]
    tasks = service.get("TasksMax", [])
    memory = service.get("MemoryMax", [])
    assert tasks, f"{unit.name}: TasksMax= is not set"
    assert memory, f"{unit.name}: MemoryMax= is not set"
    assert tasks[-1].isdigit() and 32 <= int(tasks[-1]) <= 4096, tasks
    size = _SIZE.fullmatch(memory[-1])
    assert size, f"{unit.name}: MemoryMax={memory[-1]} is not an absolute size"
    assert 64 << 20 <= int(size.group(1)) * _SIZE_UNITS[size.group(2)] <= 16 << 30, memory


def test_only_the_node_exporter_sees_nvidia_devices_and_netlink() -> None:
    for unit in SERVICES:
        service = parse_unit(unit.read_text())["Service"]
        devices = service.get("DeviceAllow", [])
        families = " ".join(service.get("RestrictAddressFamilies", [])).split()
        if unit.name == "hpcobs-node-exporter.service":
            assert devices, "the node exporter needs the NVIDIA devices for NVML"
            assert all("nvidia" in d for d in devices), devices
            assert service.get("DevicePolicy") == ["closed"]
            assert "AF_NETLINK" in families, "the rdma collector listens on rtnetlink"
        else:
            assert not any("nvidia" in d for d in devices), (unit.name, devices)
            assert service.get("PrivateDevices") == ["yes"] or service.get("DevicePolicy") == [
                "closed"
            ], f"{unit.name}: no device restriction"


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verify check can fail: an unknown setting and a missing binary are reported."""
    bad = tmp_path / "hpcobs-broken.service"
    bad.write_text(
        "[Service]\nExecStart=/nonexistent/hpcobs-x\nProtectSystem=sometimes\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    proc = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 or output.strip()
    assert "ProtectSystem" in output or "not executable" in output


def test_exposure_parser_sees_an_unhardened_unit(tmp_path: Path) -> None:
    """The exposure check can fail: a unit without hardening scores far above 2.0."""
    plain = tmp_path / "hpcobs-plain.service"
    plain.write_text("[Service]\nExecStart=/bin/true\n")
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(plain)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    match = _EXPOSURE.search(proc.stdout)
    assert match and float(match.group(1)) > 5.0, proc.stdout[-500:]
