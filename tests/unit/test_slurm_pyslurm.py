"""The pyslurm attributes hpcobs uses exist in pyslurm 25.11.2, and the fake has exactly them.

`tests/data/slurm/pyslurm_attributes.txt` lists every attribute the pyslurm backend touches.
This test reads pyslurm 25.11.2's own source (its sdist, fetched once with
`pip download --no-deps --no-binary pyslurm pyslurm==25.11.2` into build/cache/pyslurm, or
taken from $HPCOBS_PYSLURM_SDIST) and checks each one in the `.pyx`/`.pxd`/`.py` file it
names; a second test checks the fake module offers exactly the listed attributes, and the
backend is exercised against the fake elsewhere (test_slurm_backends.py), so an attribute the
backend uses but pyslurm lacks fails one of them.

(`--no-binary pyslurm`, not `:all:`: with `:all:` pip also builds pyslurm's build
dependencies, Cython included, from source to prepare the metadata; minutes instead of
seconds, for the same file, whose SHA-256 is checked.)
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import re
import subprocess
import sys
import tarfile
from functools import cache
from pathlib import Path

import pytest

from hpcobs.exporters.slurm import pyslurm_backend

from fakes import pyslurm_fake
from fakes.pyslurm_fake import (
    ClusterSpec,
    FakePyslurm,
    JobSpec,
    LicenseSpec,
    NodeSpec,
    ReservationSpec,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ATTRIBUTES = REPO / "tests" / "data" / "slurm" / "pyslurm_attributes.txt"
VERSION = "25.11.2"
SDIST = f"pyslurm-{VERSION}.tar.gz"
SHA256 = "6e0e4bc639ea3177591b102b77c1dd8df55a9e411ac42ef339a4adb3908cca34"
CACHE = REPO / "build" / "cache" / "pyslurm"


def entries() -> list[tuple[str, str]]:
    out = []
    for line in ATTRIBUTES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            path, spec = line.split(None, 1)
            out.append((path, spec.strip()))
    return out


@cache
def sdist() -> Path:
    given = os.environ.get("HPCOBS_PYSLURM_SDIST")
    path = Path(given) if given else CACHE / SDIST
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "pyslurm",
            f"pyslurm=={VERSION}",
            "-d",
            str(CACHE),
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(argv)}` timed out: cannot read pyslurm's source")
        if proc.returncode != 0 or not path.exists():
            pytest.fail(
                f"cannot fetch pyslurm {VERSION}'s source with `{' '.join(argv)}` "
                f"(needs PyPI, or HPCOBS_PYSLURM_SDIST=<{SDIST}>):\n{proc.stderr[-2000:]}"
            )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        pytest.fail(f"{path}: SHA-256 {digest}, expected pyslurm {VERSION}'s {SHA256}")
    return path


@cache
def source_files() -> dict[str, str]:
    files = {}
    with tarfile.open(sdist()) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith((".py", ".pyx", ".pxd")):
                f = tar.extractfile(member)
                assert f is not None
                files[member.name.split("/", 1)[1]] = f.read().decode("utf-8", "replace")
    return files


def class_body(text: str, owner: str) -> str | None:
    lines = text.splitlines()
    head = re.compile(rf"^(?:cdef\s+)?class\s+{re.escape(owner)}\b")
    for i, line in enumerate(lines):
        if head.match(line):
            body = []
            for later in lines[i + 1 :]:
                if later.strip() and not later[0].isspace() and not later.startswith("#"):
                    break
                body.append(later)
            return "\n".join(body)
    return None


def defines(body: str, attr: str) -> bool:
    if re.search(rf"^\s+(?:cpdef\s+\w*\s*|def\s+){re.escape(attr)}\s*\(", body, re.M):
        return True
    for m in re.finditer(r"^(\s+)cdef public:\s*\n((?:\1\s+.*\n|\s*\n)+)", body + "\n", re.M):
        for line in m.group(2).splitlines():
            if line.split() and line.split()[-1] == attr:
                return True
    return False


def module_defines(text: str, name: str) -> bool:
    n = re.escape(name)
    return bool(
        re.search(rf"^(?:cdef\s+class|class|def|cpdef\s+\w+)\s+{n}\b|^{n}\s*=", text, re.M)
        or re.search(rf"^(?:from\s+\S+\s+)?import\s+[^\n(]*\b{n}\b", text, re.M)
        or re.search(rf"^from\s+\S+\s+import\s+\([^)]*\b{n}\b[^)]*\)", text, re.M)
    )


def present(files: dict[str, str], path: str, spec: str) -> bool:
    text = files.get(path)
    if text is None:
        return False
    if spec.startswith("text:"):
        return spec[5:] in text
    owner, attr = spec.split(".", 1)
    if owner == "module":
        return module_defines(text, attr)
    stem = path.rsplit(".", 1)[0]
    bodies = [
        b
        for p in (path, stem + ".pyx", stem + ".pxd")
        if p in files
        if (b := class_body(files[p], owner)) is not None
    ]
    if "[" in attr:
        literal = attr[attr.index("[") :]
        return any(literal in b for b in bodies)
    return any(defines(b, attr) for b in bodies)


def test_every_attribute_used_exists_in_pyslurm_25_11_2() -> None:
    files = source_files()
    missing = [f"{path} {spec}" for path, spec in entries() if not present(files, path, spec)]
    assert not missing, "not in pyslurm's source:\n" + "\n".join(missing)


def test_the_checker_notices_a_missing_attribute() -> None:
    files = source_files()
    assert present(files, "pyslurm/core/job/job.pyx", "Job.eligible_time")
    assert not present(files, "pyslurm/core/job/job.pyx", "Job.eligible_times")
    assert not present(files, "pyslurm/core/node.pyx", "Job.id")
    assert not present(files, "pyslurm/__init__.py", "module.Licenses")


def _listed() -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for _, spec in entries():
        if spec.startswith("text:"):
            continue
        owner, attr = spec.split(".", 1)
        owners.setdefault(owner, set()).add(attr.split("[", 1)[0])
    return owners


def test_fake_module_offers_exactly_the_listed_attributes() -> None:
    listed = _listed()
    fake = FakePyslurm(ClusterSpec()).module()
    module_names = {n for n in vars(fake) if not n.startswith("__") or n == "__version__"}
    module_names.discard("__name__")
    assert module_names == listed["module"] - {"diag"}
    assert {n for n in vars(fake.slurmctld) if not n.startswith("__")} == {"diag"}
    for cls, owner in (
        (pyslurm_fake.Job, "Job"),
        (pyslurm_fake.Node, "Node"),
        (pyslurm_fake.Statistics, "Statistics"),
        (pyslurm_fake.RPCType, "RPCType"),
        (pyslurm_fake.TrackableResources, "TrackableResources"),
        (pyslurm_fake.TrackableResource, "TrackableResource"),
        (pyslurm_fake.GPU, "GPU"),
        (pyslurm_fake.Reservation, "Reservation"),
    ):
        assert set(cls.__slots__) == listed[owner], owner
    assert {n for n in vars(fake.Jobs) if not n.startswith("_")} == listed["Jobs"]
    assert {n for n in vars(fake.Reservations) if not n.startswith("_")} == listed["Reservations"]
    assert {n for n in vars(fake.Nodes) if not n.startswith("_")} == listed["Nodes"]
    assert {n for n in vars(fake.licenses) if not n.startswith("_")} == listed["licenses"]
    assert set(dir(pyslurm_fake._Collection)) >= listed["MultiClusterMap"]


def test_backend_uses_only_listed_attributes() -> None:
    """Every `x.name` the conversions read names a listed attribute (or a dict method)."""
    listed = set().union(*_listed().values())
    used: set[str] = set()
    for fn in pyslurm_backend.FETCH.values():
        for f in (
            fn,
            pyslurm_backend.convert_job,
            pyslurm_backend.convert_node,
            pyslurm_backend.convert_reservation,
        ):
            tree = ast.parse(inspect.getsource(f))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(
                    node.value, ast.Name | ast.Attribute
                ):
                    used.add(node.attr)
    allowed = listed | {"get", "items", "values", "append"}  # dict and list methods
    assert used - allowed == set()


def test_fake_follows_pyslurm_conventions() -> None:
    fake = FakePyslurm(
        ClusterSpec(
            jobs=[
                JobSpec(5, "PENDING", array_job_id=5, remainder="1-9%2"),
                JobSpec(6, "RUNNING", array_job_id=5, task=0, start=100, nodes="n1"),
                JobSpec(7, "PENDING"),
            ],
            nodes=[NodeSpec("n1", ["p"], "IDLE", gpus=2, gpu_type="a100", gpus_allocated=1)],
            licenses=[LicenseSpec("m", 3, 1)],
        )
    ).module()
    rest, task0, plain = fake.Jobs.load().values()
    assert rest.array_tasks_waiting == "1-9" and rest.array_task_id is None
    assert task0.array_task_id is None and task0.array_id == 5  # pyslurm's u32_parse(0)
    assert plain.array_id is None and plain.start_time is None and plain.allocated_nodes is None
    (node,) = fake.Nodes.load().values()
    assert node.configured_gres == {"gpu:a100": 2}
    assert node.allocated_gres == {"gpu": 1, "gpu:a100": 1}
    assert fake.licenses().get() == {"m": {"total": 3, "in_use": 1, "available": 2}}
    with pytest.raises(AttributeError):
        _ = plain.name  # not an attribute hpcobs uses


def test_fake_reservations_follow_pyslurm_conventions() -> None:
    fake = FakePyslurm(
        ClusterSpec(
            reservations=[
                ReservationSpec("m", 10, 20, "n[1-2]", "", ["MAINT", "SPEC_NODES", "DAILY"]),
                ReservationSpec("p", 30, 40, "", "debug", []),
            ]
        )
    ).module()
    maint, plain = fake.Reservations.load().values()
    names = {member.name for member in type(maint.flags) if member in maint.flags}
    assert names == {"MAINTENANCE", "SPECIFIC_NODES"}  # pyslurm's names, not scontrol's
    assert maint.reoccurrence.name == "DAILY" and plain.reoccurrence.name == "NO"
    assert plain.nodes is None and maint.partition is None
    converted = pyslurm_backend.convert_reservation(maint)
    assert converted.flags == ("DAILY", "MAINT", "SPEC_NODES") and converted.nodes == "n[1-2]"
