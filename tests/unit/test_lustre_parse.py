"""Lustre parsers: the real 2.10 fixture files, and hypothesis properties for every format
(arbitrary text never raises; well-formed random inputs give back the numbers they were
made from, checked against PyYAML where the format is YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcobs.exporters.parse import lustre as L

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the comparisons with PyYAML are the slow ones (its loader)
YAML_PROPERTY = settings(PROPERTY, max_examples=50)


@pytest.fixture(scope="module")
def tree(fixture_trees: Path) -> Path:
    return fixture_trees / "lustre-2.10-hpe" / "proc" / "fs" / "lustre"


# -- the real files ------------------------------------------------------------------------------


def test_llite_stats_of_the_fixture(tree: Path) -> None:
    stats = L.parse_stats((tree / "llite/lustrefs-ffff88105db50000/stats").read_text())
    assert stats.problems == 0
    assert stats.snapshot_time == pytest.approx(1510950459.772792457)
    assert stats.stats["read_bytes"] == L.Stat(1, "bytes", 4194304, 4194304, 4194304)
    assert stats.stats["write_bytes"] == L.Stat(89467810, "bytes", 4096, 1048576, 93813797294080)
    assert stats.stats["open"] == L.Stat(136, "regs")
    assert stats.stats["inode_permission"].samples == 398


def test_obdfilter_stats_add_up_the_repeated_statfs(tree: Path) -> None:
    stats = L.parse_stats((tree / "obdfilter/lustrefs-OST0000/stats").read_text())
    assert stats.problems == 0
    assert stats.stats["statfs"].samples == 35359 + 124430
    assert stats.stats["write_bytes"].sum == 16552048697344
    assert "read_bytes" not in stats.stats  # the kernel leaves out counters without samples


def test_osc_stats_keep_sumsq_beyond_64_bits(tree: Path) -> None:
    stats = L.parse_stats((tree / "osc/lustrefs-OST0000-osc-ffff88105db50000/stats").read_text())
    assert stats.stats["write_bytes"].sumsq == 10009909738331963392
    assert stats.stats["req_waittime"] == L.Stat(
        18215581, "usec", 69, 1348857, 110282569237, 8342874290406023
    )


def test_ost_job_stats_of_the_fixture(tree: Path) -> None:
    text = (tree / "obdfilter/lustrefs-OST0000/job_stats").read_text()
    parsed = L.parse_job_stats(text)
    assert parsed.problems == 0
    assert len(parsed.jobs) == 35
    job = parsed.jobs[0]
    assert job.job_id == "24" and job.snapshot_time == 1510782606
    assert job.stats["write_bytes"] == L.Stat(64575, "bytes", 4096, 4194304, 215147593728)
    assert job.stats["read_bytes"] == L.Stat(0, "bytes", 0, 0, 0)
    assert job.stats["punch"] == L.Stat(1, "reqs")
    table = L.parse_job_io(text.encode())
    assert table.problems == 0 and len(table) == 35
    i = table.job_ids.index("26")
    assert table.write_bytes[i] == 185838792704 and table.write_samples[i] == 56048
    assert table.read_bytes[i] == 0
    assert table.job_ids[-1] == "49"


def test_the_fixtures_job_stats_agree_with_pyyaml(tree: Path) -> None:
    for path in (
        tree / "obdfilter/lustrefs-OST0000/job_stats",
        tree / "mdt/lustrefs-MDT0000/job_stats",
    ):
        text = path.read_text()
        _assert_same_as_yaml(L.parse_job_stats(text), yaml.safe_load(text))


def test_mdt_job_stats_have_no_data_lines(tree: Path) -> None:
    text = (tree / "mdt/lustrefs-MDT0000/job_stats").read_text()
    parsed = L.parse_job_stats(text)
    assert parsed.jobs[0].job_id == "43"
    assert parsed.jobs[0].stats["setattr"] == L.Stat(1, "reqs")
    table = L.parse_job_io(text)
    assert table.read_bytes[0] is None and table.write_bytes[0] is None


def test_brw_stats_of_the_fixture(tree: Path) -> None:
    brw = L.parse_brw_stats((tree / "osd-zfs/lustrefs-OST0000/brw_stats").read_text())
    assert brw.problems == 0
    assert brw.snapshot_time == pytest.approx(1510782606.797216394)
    pages = brw.sections["pages per bulk r/w"]
    assert pages[0] == L.BrwRow(1, 13, 153)
    assert pages[-1] == L.BrwRow(1024, 0, 4059303)
    size = brw.sections["disk I/O size"]
    assert size[0] == L.BrwRow(8, 4, 0)
    assert L.BrwRow(4096, 0, 153) in size
    assert size[-1] == L.BrwRow(4 * 1024 * 1024, 0, 4059303)
    assert brw.sections["I/O time (1/1000s)"] == [L.BrwRow(1, 1, 0)]
    assert len(brw.sections["discontiguous pages"]) == 32


def test_brw_stats_through_the_obdfilter_symlink_is_the_osd_histogram(tree: Path) -> None:
    # on an OSS, obdfilter/<ost>/brw_stats is a symlink into the osd; read through it, it is
    # the osd's histogram, as `cat` shows it on the server
    link = tree / "obdfilter/lustrefs-OST0000/brw_stats"
    assert link.is_symlink()
    assert str(link.readlink()) == "../../osd-zfs/lustrefs-OST0000/brw_stats"
    through = L.parse_brw_stats(link.read_text())
    direct = L.parse_brw_stats((tree / "osd-zfs/lustrefs-OST0000/brw_stats").read_text())
    assert through == direct and through.problems == 0
    assert through.sections["pages per bulk r/w"][0] == L.BrwRow(1, 13, 153)


def test_the_fixture_keeps_upstreams_dangling_symlinks(tree: Path) -> None:
    # three per OST point into an osd-zfs/<ost>/ that lacks them, as upstream lays them out
    for ost in ("OST0000", "OST0002", "OST0004", "OST0006"):
        for name in ("read_cache_enable", "writethrough_cache_enable", "readcache_max_filesize"):
            link = tree / f"obdfilter/lustrefs-{ost}/{name}"
            assert link.is_symlink() and not link.exists(), link


def test_import_of_the_fixture(tree: Path) -> None:
    info = L.parse_import((tree / "osc/lustrefs-OST0000-osc-ffff88105db50000/import").read_text())
    assert info == L.ImportInfo(
        state="FULL",
        target="lustrefs-OST0000_UUID",
        rpcs_in_flight=8,
        rpc_timeouts=0,
        avg_wait_usec=6054,
        connection_attempts=1,
        current_connection="172.20.20.5@o2ib",
    )
    mdc = L.parse_import((tree / "mdc/lustrefs-MDT0000-mdc-ffff88105db50000/import").read_text())
    assert mdc is not None and mdc.state == "FULL" and mdc.avg_wait_usec == 408


def test_state_file_of_the_fixture(tree: Path) -> None:
    text = (tree / "osc/lustrefs-OST0000-osc-ffff88105db50000/state").read_text()
    assert L.parse_import_state_file(text) == "FULL"


def test_small_files_of_the_fixture(tree: Path) -> None:
    llite = tree / "llite/lustrefs-ffff88105db50000"
    assert L.parse_int((llite / "kbytestotal").read_text()) == 283010362368
    assert L.parse_max_cached_mb((llite / "max_cached_mb").read_text()) == L.CacheInfo(
        32064, 5116, 26948
    )
    assert L.parse_recovery_status(
        (tree / "obdfilter/lustrefs-OST0000/recovery_status").read_text()
    ) == L.RecoveryStatus("complete", 1, 1)
    assert L.parse_recovery_status(
        (tree / "mdt/lustrefs-MDT0000/recovery_status").read_text()
    ) == L.RecoveryStatus("inactive")
    health = tree.parent.parent.parent / "sys/fs/lustre/health_check"
    assert L.parse_health_check(health.read_text()) is True


# -- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "healthy"),
    [
        ("healthy\n", True),
        ("NOT HEALTHY\n", False),
        ("LBUG\n", False),
        ("device lustrefs-OST0000 reported unhealthy\nNOT HEALTHY\n", False),
        ("", False),
    ],
)
def test_health_check(text: str, healthy: bool) -> None:
    assert L.parse_health_check(text) is healthy


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lustrefs-OST0000", L.TargetName("lustrefs", "lustrefs-OST0000", "OST0000")),
        ("my-fs-MDT0001", L.TargetName("my-fs", "my-fs-MDT0001", "MDT0001")),
        ("MGS", None),
        ("lustrefs-OST0000-osc-MDT0000", None),
    ],
)
def test_target_names(name: str, expected: L.TargetName | None) -> None:
    assert L.parse_target_name(name) == expected


def test_client_import_names() -> None:
    assert L.parse_client_import_name("lustrefs-OST0003-osc-ffff88105db50000") == (
        L.ClientImportName("lustrefs", "lustrefs-OST0003", "osc", "ffff88105db50000")
    )
    assert L.parse_client_import_name("lustrefs-MDT0000-mdc-ffff88105db50000") is not None
    assert L.parse_client_import_name("lustrefs-OST0000-osc-MDT0000") is None  # an MDS's OSP
    assert L.parse_mount_name("lustrefs-ffff88105db50000") == L.MountName(
        "lustrefs", "ffff88105db50000"
    )


def test_job_stats_faults_give_what_parses() -> None:
    text = (
        "job_stats:\n"
        "- job_id:          good.1\n"
        "  snapshot_time:   1700000000.5 secs.nsecs\n"
        "  write_bytes:     { samples: 7, unit: bytes, min: 1, max: 2, sum: 7340032 }\n"
        "  bad_counter:     { garbage }\n"
        "  new_counter:     { samples: 3, unit: reqs, hist: [1, 2] }\n"
        "garbage at column 0\n"
        "- snapshot_time:   5\n"  # an item without job_id
        '- job_id:          "quoted \\"id\\""\n'
        "  read_bytes:      { samples: 2, unit: KiB, min: 1, max: 1, sum: 2 }\n"
        "  write_bytes:     { samples: 1, unit: bytes, min: 9, max: 9, sum: 9 }\n"
        "- job_id:          trunc.3\n"
        "  write_bytes:     { samples: 4, unit: by"
    )
    parsed = L.parse_job_stats(text)
    assert [j.job_id for j in parsed.jobs] == ["good.1", 'quoted "id"', "trunc.3"]
    assert parsed.jobs[0].snapshot_time == 1700000000.5
    assert parsed.jobs[0].stats["new_counter"] == L.Stat(3, "reqs")
    assert parsed.problems == 4  # bad_counter, garbage, the item without id, the cut line
    table = L.parse_job_io(text.encode())
    assert table.write_bytes == [7340032, 9, None]
    assert table.read_bytes == [None, None, None]  # KiB is not bytes
    assert table.problems == 5


def test_job_io_fast_path_takes_quoted_ids_and_new_keys() -> None:
    text = (
        b"job_stats:\n"
        b'- job_id:          "dd.0"\n'
        b"  snapshot_time:   1627917009.580356082 secs.nsecs\n"
        b"  start_time:      1627916998.393429227 secs.nsecs\n"
        b"  elapsed_time:    11.186926855 secs.nsecs\n"
        b"  read_bytes:      { samples: 0, unit: bytes, min: 0, max: 0, sum: 0, sumsq: 0, hist: {  } }\n"
        b"  write_bytes:     { samples: 10, unit: bytes, min: 1048576, max: 1048576, sum: 10485760, sumsq: 10995116277760 }\n"
        b"  write:           { samples: 10, unit: usecs, min: 1390, max: 3013, sum: 19373, sumsq: 39826045 }\n"
        b"- job_id:          cp.1000\n"
        b"  snapshot_time:   1627917010\n"
        b"  read_bytes:      { samples: 3, unit: bytes, min: 4096, max: 4096, sum: 12288 }\n"
        b"  write_bytes:     { samples: 0, unit: bytes, min: 0, max: 0, sum: 0 }\n"
    )
    fast = L._job_io_fast(text)
    assert fast is not None
    assert fast == L.job_io_table(L.parse_job_stats(text.decode()))
    assert fast.job_ids == ["dd.0", "cp.1000"]
    assert fast.write_bytes == [10485760, 0] and fast.read_samples == [0, 3]


def test_block_mapping_keeps_nesting_and_skips_lists() -> None:
    doc = L.parse_block_mapping(
        "import:\n    name: x\n    connection:\n       failover_nids: [ a, b ]\n"
        "       attempts: 1\n    rpcs:\n       inflight: 8\n - [ 1, FULL ]\n"
    )
    assert doc == {
        "import": {
            "name": "x",
            "connection": {"failover_nids": "[ a, b ]", "attempts": "1"},
            "rpcs": {"inflight": "8"},
        }
    }


# -- properties: arbitrary input ----------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "\n",
        " ",
        "  ",
        "\t",
        ":",
        "{",
        "}",
        ",",
        "|",
        "[",
        "]",
        "-",
        "- ",
        '"',
        "'",
        "\\",
        "#",
        "samples",
        "samples:",
        "unit:",
        "bytes",
        "reqs",
        "usecs",
        "min:",
        "max:",
        "sum:",
        "sumsq:",
        "job_id:",
        "job_stats:",
        "read_bytes:",
        "write_bytes:",
        "snapshot_time",
        "secs.nsecs",
        "[bytes]",
        "[reqs]",
        "import:",
        "state:",
        "FULL",
        "rpcs:",
        "inflight:",
        "read      |     write",
        "rpcs  % cum % |  rpcs        % cum %",
        "pages per bulk r/w",
        "1K:",
        "4M:",
        "0",
        "7",
        "123456789012345678901234567890",
        "-5",
        "1.5",
        "\x00",
        "é",
        "\ud800",
        "healthy",
        "status: COMPLETE",
        "completed_clients: 1/2",
        "max_cached_mb:",
    ]
)
ARBITRARY = st.one_of(st.text(), st.lists(FRAGMENTS, max_size=60).map("".join))


@PROPERTY
@given(ARBITRARY)
def test_no_parser_raises_on_arbitrary_text(text: str) -> None:
    L.parse_stats(text)
    L.parse_int(text)
    L.parse_key_values(text)
    L.parse_max_cached_mb(text)
    L.parse_recovery_status(text)
    L.parse_health_check(text)
    L.parse_block_mapping(text)
    L.parse_import(text)
    L.parse_import_state_file(text)
    L.parse_brw_stats(text)
    L.parse_job_stats(text)
    L.parse_job_io(text)
    L.parse_job_io(text.encode("utf-8", errors="surrogatepass"))
    L.parse_scalar(text)
    L.parse_target_name(text)
    L.parse_client_import_name(text)
    L.parse_mount_name(text)


@PROPERTY
@given(st.binary())
def test_job_io_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    L.parse_job_io(data)
    L.parse_job_io(b"job_stats:\n- job_id: x\n" + data)


# -- properties: stats files ----------------------------------------------------------------------

COUNT = st.integers(0, 2**64 - 1)
STAT_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,24}", fullmatch=True).filter(
    lambda n: not n.endswith("_time")
)
STAT = st.tuples(
    COUNT,
    st.sampled_from(["bytes", "reqs", "usec", "usecs", "regs", "pages"]),
    st.one_of(st.none(), st.tuples(COUNT, COUNT, COUNT, st.one_of(st.none(), COUNT))),
)


@PROPERTY
@given(st.dictionaries(STAT_NAMES, STAT, max_size=30), st.integers(1, 30))
def test_stats_files_round_trip(stats: dict[str, Any], width: int) -> None:
    lines = ["snapshot_time             1700000000.123456789 secs.nsecs"]
    for name, (samples, unit, numbers) in stats.items():
        line = f"{name:<{width}} {samples} samples [{unit}]"
        if numbers is not None:
            lo, hi, total, sumsq = numbers
            line += f" {lo} {hi} {total}" + ("" if sumsq is None else f" {sumsq}")
        lines.append(line)
    parsed = L.parse_stats("\n".join(lines) + "\n")
    assert parsed.problems == 0
    assert parsed.snapshot_time == pytest.approx(1700000000.123456789)
    assert set(parsed.stats) == set(stats)
    for name, (samples, unit, numbers) in stats.items():
        got = parsed.stats[name]
        assert (got.samples, got.unit) == (samples, unit)
        if numbers is None:
            assert (got.min, got.max, got.sum, got.sumsq) == (None, None, None, None)
        else:
            assert (got.min, got.max, got.sum, got.sumsq) == numbers


@PROPERTY
@given(st.lists(st.tuples(COUNT, COUNT), min_size=1, max_size=5))
def test_repeated_stats_lines_add_up(parts: list[tuple[int, int]]) -> None:
    text = "".join(f"statfs {n} samples [reqs] 1 1 {s}\n" for n, s in parts)
    stat = L.parse_stats(text).stats["statfs"]
    assert stat.samples == sum(n for n, _ in parts)
    assert stat.sum == sum(s for _, s in parts)


# -- properties: job_stats -----------------------------------------------------------------------


def _plain_ok(text: str) -> bool:
    """A job id that YAML reads back as itself (as a string or an integer)."""
    try:
        value = yaml.safe_load(f"k: {text}")["k"]
    except yaml.YAMLError:
        return False
    return (isinstance(value, str) and value == text) or (type(value) is int and str(value) == text)


PLAIN_IDS = st.one_of(
    st.integers(0, 10**12).map(str),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.@:\-]{0,30}", fullmatch=True),
).filter(_plain_ok)
QUOTED_IDS = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x85\u2028\u2029"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() != "" or s != "")
OPS = st.sampled_from(
    [
        "getattr",
        "setattr",
        "punch",
        "sync",
        "destroy",
        "create",
        "statfs",
        "get_info",
        "open",
        "close",
        "mknod",
        "unlink",
        "read",
        "write",
        "samedir_rename",
        "prealloc",
    ]
)


@st.composite
def job_docs(draw: st.DrawFn, data_lines: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """A job_stats file in the kernel's shape, and the jobs it was made from."""
    ids = draw(st.lists(st.one_of(PLAIN_IDS, QUOTED_IDS), max_size=12, unique=True))
    new_times = draw(st.booleans())
    sumsq = draw(st.booleans())
    lines = ["job_stats:"]
    jobs = []
    for job_id in ids:
        quoted = not _plain_ok(job_id) or draw(st.booleans())
        shown = (
            yaml.dump(job_id, default_style='"', width=10**9).splitlines()[0] if quoted else job_id
        )
        lines.append(f"- job_id:          {shown}")
        if new_times:
            lines.append("  snapshot_time:   1627917009.580356082 secs.nsecs")
            lines.append("  start_time:      1627916998.393429227 secs.nsecs")
            lines.append("  elapsed_time:    11.186926855 secs.nsecs")
        else:
            lines.append("  snapshot_time:   1510782606")
        stats: dict[str, tuple[int, str, tuple[int, ...] | None]] = {}
        keys = ["read_bytes", "write_bytes"] if data_lines else []
        keys += draw(st.lists(OPS, unique=True, max_size=6))
        for key in keys:
            unit = "bytes" if key.endswith("_bytes") else draw(st.sampled_from(["reqs", "usecs"]))
            n = draw(COUNT)
            if unit == "bytes" or draw(st.booleans()):
                numbers = tuple(draw(COUNT) for _ in range(4 if sumsq else 3))
                extra = "".join(
                    f", {k}: {v:>8}"
                    for k, v in zip(("min", "max", "sum", "sumsq"), numbers, strict=False)
                )
            else:
                numbers, extra = None, ""
            lines.append(f"  {key + ':':<16} {{ samples: {n:>11}, unit: {unit:>5}{extra} }}")
            stats[key] = (n, unit, numbers)
        jobs.append({"job_id": job_id, "stats": stats})
    return "\n".join(lines) + "\n", jobs


def _assert_same_as_yaml(parsed: L.JobStatsFile, doc: Any) -> None:
    expected = (doc or {}).get("job_stats") or []
    assert len(parsed.jobs) == len(expected)
    for job, item in zip(parsed.jobs, expected, strict=True):
        assert job.job_id == str(item["job_id"])
        flows = {k: v for k, v in item.items() if isinstance(v, dict)}
        assert set(job.stats) == set(flows)
        for key, flow in flows.items():
            got = job.stats[key]
            assert got.samples == flow["samples"] and got.unit == flow["unit"]
            for field in ("min", "max", "sum", "sumsq"):
                assert getattr(got, field) == flow.get(field)


@YAML_PROPERTY
@given(job_docs())
def test_job_stats_agree_with_pyyaml(doc: tuple[str, list[dict[str, Any]]]) -> None:
    text, jobs = doc
    parsed = L.parse_job_stats(text)
    assert parsed.problems == 0
    _assert_same_as_yaml(parsed, yaml.safe_load(text))
    assert [j.job_id for j in parsed.jobs] == [j["job_id"] for j in jobs]


@PROPERTY
@given(job_docs())
def test_job_io_fast_path_matches_the_line_parser(doc: tuple[str, list[dict[str, Any]]]) -> None:
    text, jobs = doc
    table = L.parse_job_io(text.encode())
    assert table == L.job_io_table(L.parse_job_stats(text))
    assert table.job_ids == [j["job_id"] for j in jobs]
    for i, job in enumerate(jobs):
        n, _, numbers = job["stats"]["write_bytes"]
        assert table.write_samples[i] == n and table.write_bytes[i] == numbers[2]
    plain_quotes = all(
        '\\' not in j["job_id"] and '"' not in j["job_id"] and "#" not in j["job_id"]
        and j["job_id"].isascii() and j["job_id"].isprintable()
        # a plain id may not start with a YAML indicator (the fast path leaves "-1" to the
        # line parser, which reads it the same)
        and not j["job_id"][:1].isspace() and j["job_id"][:1] not in "\"'[]{}&*!|>%@`#-"
        for j in jobs
    )  # fmt: skip
    if jobs and plain_quotes and "#" not in text:
        assert L._job_io_fast(text.encode()) is not None  # the fast path did the work


@PROPERTY
@given(job_docs(data_lines=False))
def test_job_stats_without_data_lines(doc: tuple[str, list[dict[str, Any]]]) -> None:
    text, jobs = doc
    table = L.parse_job_io(text.encode())
    assert table.job_ids == [j["job_id"] for j in jobs]
    assert table.read_bytes == [None] * len(jobs) and table.write_bytes == [None] * len(jobs)


@PROPERTY
@given(job_docs(), st.data())
def test_truncated_job_stats_give_a_prefix_of_the_jobs(
    doc: tuple[str, list[dict[str, Any]]], data: st.DataObject
) -> None:
    text, jobs = doc
    cut = data.draw(st.integers(0, len(text)))
    parsed = L.parse_job_stats(text[:cut])
    ids = [j.job_id for j in parsed.jobs]
    full = [j["job_id"] for j in jobs]
    # every id but the last is whole; the last may be cut short
    assert len(ids) <= len(full)
    if ids:
        assert ids[:-1] == full[: len(ids) - 1]
        assert full[len(ids) - 1].startswith(ids[-1])
    table = L.parse_job_io(text[:cut].encode())
    assert len(table.job_ids) <= len(full)


# -- properties: scalars, import files, brw_stats ------------------------------------------------


@PROPERTY
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
def test_double_quoted_scalars_round_trip(text: str) -> None:
    shown = yaml.dump(text, default_style='"', width=10**9)
    first = shown.splitlines()[0] if shown.count("\n") == 1 else None
    if first is not None:
        assert L.parse_scalar(first) == text == yaml.safe_load(first)


KEYS = st.from_regex(r"[a-z][a-z0-9_\-]{0,12}", fullmatch=True).filter(_plain_ok)  # not `no`, `on`
WORDS = st.one_of(
    st.integers(0, 10**15).map(str),
    st.from_regex(r"[a-z][a-z0-9_.@]{0,15}( usec)?", fullmatch=True),
).filter(_plain_ok)
MAPPINGS = st.recursive(
    WORDS, lambda children: st.dictionaries(KEYS, children, min_size=1, max_size=5), max_leaves=20
)


def _render_block(value: dict[str, Any], indent: int, step: int) -> list[str]:
    lines = []
    for key, child in value.items():
        if isinstance(child, dict):
            lines.append(f"{' ' * indent}{key}:")
            lines += _render_block(child, indent + step, step)
        else:
            lines.append(f"{' ' * indent}{key}: {child}")
    return lines


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    return str(value)


@YAML_PROPERTY
@given(st.dictionaries(KEYS, MAPPINGS, min_size=1, max_size=5), st.integers(1, 4))
def test_block_mappings_agree_with_pyyaml(doc: dict[str, Any], step: int) -> None:
    text = "\n".join(_render_block(doc, 0, step)) + "\n"
    assert L.parse_block_mapping(text) == _stringify(yaml.safe_load(text))


STATES = st.sampled_from(
    [
        "FULL",
        "DISCONN",
        "CONNECTING",
        "IDLE",
        "EVICTED",
        "CLOSED",
        "NEW",
        "REPLAY",
        "REPLAY_LOCKS",
        "REPLAY_WAIT",
        "RECOVER",
    ]
)


@PROPERTY
@given(STATES, st.integers(0, 10**6), st.integers(0, 10**9), st.integers(0, 10**6))
def test_import_files_round_trip(state: str, inflight: int, wait: int, timeouts: int) -> None:
    text = (
        "import:\n"
        "    name: fs-OST0001-osc-ffff88105db50000\n"
        "    target: fs-OST0001_UUID\n"
        f"    state: {state}\n"
        "    connect_flags: [ write_grant, server_lock ]\n"
        "    connect_data:\n"
        "       flags: 0x20405af0e3440478\n"
        "    import_flags: [ replayable, pingable ]\n"
        "    connection:\n"
        "       failover_nids: [ 10.0.0.1@tcp ]\n"
        "       current_connection: 10.0.0.1@tcp\n"
        "       connection_attempts: 3\n"
        "    rpcs:\n"
        f"       inflight: {inflight}\n"
        "       unregistering: 0\n"
        f"       timeouts: {timeouts}\n"
        f"       avg_waittime: {wait} usec\n"
        "    service_estimates:\n"
        "       services: 1 sec\n"
    )
    assert L.parse_import(text) == L.ImportInfo(
        state, "fs-OST0001_UUID", inflight, timeouts, wait, 3, "10.0.0.1@tcp"
    )


BRW_TITLES = st.sampled_from(
    [
        "pages per bulk r/w",
        "discontiguous pages",
        "disk I/Os in flight",
        "I/O time (1/1000s)",
        "disk I/O size",
        "block maps msec",
    ]
)


def _label(bound: int) -> str:
    for suffix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if bound >= scale and bound % scale == 0:
            return f"{bound // scale}{suffix}"
    return str(bound)


@PROPERTY
@given(
    st.dictionaries(
        BRW_TITLES,
        st.lists(
            st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)), min_size=1, max_size=25
        ),
        max_size=6,
    ),
    st.integers(0, 8),
)
def test_brw_stats_round_trip(sections: dict[str, list[tuple[int, int]]], first: int) -> None:
    out = ["snapshot_time:         1510782606.797216394 (secs.nsecs)", ""]
    for title, rows in sections.items():
        out.append("                           read      |     write")
        out.append(f"{title:<22} rpcs  % cum % |  rpcs        % cum %")
        for i, (r, w) in enumerate(rows):
            out.append(
                f"{_label(1 << (first + i))}:\t\t{r:>10} {i % 100:>3} {99:>3}   | {w:>5} {0:>3} {100:>3}"
            )
        out.append("")
    brw = L.parse_brw_stats("\n".join(out))
    assert brw.problems == 0
    assert set(brw.sections) == set(sections)
    for title, rows in sections.items():
        assert brw.sections[title] == [
            L.BrwRow(1 << (first + i), r, w) for i, (r, w) in enumerate(rows)
        ]


@PROPERTY
@given(st.integers(-(10**15), 10**15), st.sampled_from(["", " ", "\n", "  \n"]))
def test_single_values_round_trip(value: int, pad: str) -> None:
    assert L.parse_int(f"{pad}{value}{pad}") == value


@PROPERTY
@given(
    st.sampled_from(["COMPLETE", "RECOVERING", "INACTIVE", "WAITING"]),
    st.integers(0, 999),
    st.integers(0, 999),
)
def test_recovery_status_round_trips(status: str, done: int, total: int) -> None:
    text = (
        f"status: {status}\nrecovery_start: 1\ncompleted_clients: {done}/{total}\nVBR: DISABLED\n"
    )
    assert L.parse_recovery_status(text) == L.RecoveryStatus(status.lower(), done, total)


@PROPERTY
@given(
    st.integers(0, 10**9),
    st.one_of(st.none(), st.integers(0, 10**9)),
    st.one_of(st.none(), st.integers(0, 10**9)),
)
def test_max_cached_mb_round_trips(limit: int, used: int | None, unused: int | None) -> None:
    if used is None and unused is None:
        assert L.parse_max_cached_mb(f"{limit}\n") == L.CacheInfo(limit, None, None)  # old releases
    lines = ["users: 3", f"max_cached_mb: {limit}"]
    lines += [] if used is None else [f"used_mb: {used}"]
    lines += [] if unused is None else [f"unused_mb: {unused}"]
    lines.append("reclaim_count: 0")
    assert L.parse_max_cached_mb("\n".join(lines) + "\n") == L.CacheInfo(limit, used, unused)


@PROPERTY
@given(st.sampled_from(["", " ", "\n", "\t"]), st.sampled_from(["", "\n", " \n"]), ARBITRARY)
def test_health_check_is_healthy_only_for_healthy(before: str, after: str, other: str) -> None:
    assert L.parse_health_check(f"{before}healthy{after}") is True
    assert L.parse_health_check(other) is (other.strip() == "healthy")


FS_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)


@PROPERTY
@given(FS_NAMES, st.sampled_from(["OST", "MDT"]), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1))
def test_device_names_round_trip(fs: str, kind: str, index: int, instance: int) -> None:
    target = f"{kind}{index:04x}"
    sb = f"{instance:016x}"
    assert L.parse_target_name(f"{fs}-{target}") == L.TargetName(fs, f"{fs}-{target}", target)
    client = "osc" if kind == "OST" else "mdc"
    assert L.parse_client_import_name(f"{fs}-{target}-{client}-{sb}") == (
        L.ClientImportName(fs, f"{fs}-{target}", client, sb)
    )
    assert L.parse_target_name(f"{fs}-{target}-osc-MDT0000") is None
    assert L.parse_mount_name(f"{fs}-{sb}") == L.MountName(fs, sb)


def test_an_id_starting_with_a_yaml_indicator_takes_the_line_parser() -> None:
    text = (
        "job_stats:\n- job_id:          -1\n  snapshot_time:   1510782606\n"
        "  read_bytes:      { samples:           2, unit: bytes, min: 1, max: 9, sum: 10 }\n"
        "  write_bytes:     { samples:           1, unit: bytes, min: 5, max: 5, sum: 5 }\n"
    )
    assert L._job_io_fast(text.encode()) is None
    table = L.parse_job_io(text.encode())
    assert table == L.job_io_table(L.parse_job_stats(text))
    assert table.job_ids == ["-1"] and table.read_bytes == [10] and table.write_bytes == [5]
