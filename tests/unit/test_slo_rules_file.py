"""`hpcobs-slo rules -o FILE`: written atomically, with a mode Prometheus can read (issue 14.2).

The temporary file behind the atomic rename is created 0600; renamed as is, it replaced a
0644 rule file with one that the user `prometheus` could not read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcobs.slo.cli import main
from hpcobs.slo.loader import load_specs
from hpcobs.slo.rules import render

pytestmark = pytest.mark.unit

SPEC = Path(__file__).resolve().parent.parent / "golden" / "slo" / "burn.spec.yaml"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rules(out: Path) -> int:
    return main(["rules", str(SPEC), "-o", str(out)])


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize("old_mode", [0o644, 0o640, 0o604, 0o600], ids=oct)
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, old_mode: int, umask: None) -> None:
    out = tmp_path / "slo.rules.yml"
    out.write_text("groups: []\n")
    out.chmod(old_mode)
    os.umask(0o077)  # the umask is for new files only
    assert rules(out) == 0
    assert mode(out) == old_mode
    loaded = load_specs([SPEC])
    assert out.read_text() == render(loaded.slos, sources=[SPEC.name])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


@pytest.mark.parametrize(
    ("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)], ids=oct
)
def test_a_new_file_gets_0666_less_the_umask(
    tmp_path: Path, mask: int, expected: int, umask: None
) -> None:
    os.umask(mask)
    out = tmp_path / "new.rules.yml"
    assert rules(out) == 0
    assert mode(out) == expected

    from hpcobs.slo.cli import current_umask

    assert current_umask() == mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    from hpcobs.slo.cli import write_atomically

    out = tmp_path / "slo.rules.yml"
    out.write_text("old\n")

    def chunks() -> Iterator[str]:
        yield "partial"
        raise RuntimeError("generation failed")

    with pytest.raises(RuntimeError):
        write_atomically(out, chunks())
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
