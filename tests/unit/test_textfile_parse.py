"""The textfile parser (exporters/parse/textfile.py): the text format as Go's expfmt reads it,
checked on examples, against prometheus_client's own parser and writer on generated texts, and
fuzzed: malformed input gives ParseError and nothing else, and never hangs (pytest-timeout)."""

from __future__ import annotations

import math
import string
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpcobs.exporters.parse.textfile import (
    Family,
    ParseError,
    parse,
    parse_float,
    parse_int64,
)

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHECKPOINT = """# HELP hpcobs_checkpoint_duration_seconds Wall time of the latest attempt.
# TYPE hpcobs_checkpoint_duration_seconds gauge
hpcobs_checkpoint_duration_seconds{job_id="4242",name="model"} 1.0023
# HELP hpcobs_checkpoints_total Checkpoint attempts.
# TYPE hpcobs_checkpoints_total counter
hpcobs_checkpoints_total{job_id="4242",name="model",result="success"} 2.0
hpcobs_checkpoints_total{job_id="4242",name="model",result="failure"} 0.0
"""


def samples(families: Iterable[Family]) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in families for s in f.samples]


def error(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text)
    return info.value


# -- examples ----------------------------------------------------------------------------------
def test_a_checkpoint_file() -> None:
    families = parse(CHECKPOINT)
    assert [(f.name, f.type, f.help) for f in families] == [
        ("hpcobs_checkpoint_duration_seconds", "gauge", "Wall time of the latest attempt."),
        ("hpcobs_checkpoints_total", "counter", "Checkpoint attempts."),
    ]
    assert samples(families)[1] == (
        "hpcobs_checkpoints_total",
        {"job_id": "4242", "name": "model", "result": "success"},
        2.0,
    )


def test_histogram_summary_and_untyped() -> None:
    text = (
        "# TYPE h histogram\n"
        'h_bucket{le="0.5"} 1\n'
        'h_bucket{le="+Inf"} 3\n'
        "h_sum 2.5\n"
        "h_count 3\n"
        "# TYPE s summary\n"
        's{quantile="0.99"} NaN\n'
        "s_sum 1e3\n"
        "s_count 7\n"
        "loose_metric -Inf\n"
    )
    families = parse(text)
    assert [(f.name, f.type, len(f.samples)) for f in families] == [
        ("h", "histogram", 4),
        ("s", "summary", 3),
        ("loose_metric", "untyped", 1),
    ]
    assert math.isnan(families[1].samples[0].value)
    assert families[2].samples[0].value == -math.inf


def test_blanks_comments_escapes_and_a_trailing_comma() -> None:
    text = (
        "\n"
        "# a comment\n"
        "#\n"
        "   # HELP  m  back\\\\slash and\\nnewline\n"
        "\t# TYPE m GAUGE\n"
        '  m { a = "x\\"y\\\\z\\n" , b="" , }\t 1.5e-3  \t\n'
        "m2{} 4 1700000000000\n"
    )
    families = parse(text)
    assert families[0].help == "back\\slash and\nnewline"
    assert families[0].type == "gauge"
    assert families[0].samples[0].labels == {"a": 'x"y\\z\n', "b": ""}
    assert families[0].samples[0].value == 0.0015
    assert families[1].samples[0].timestamp_ms == 1700000000000


def test_samples_of_a_family_need_not_be_together_and_help_may_follow() -> None:
    families = parse('a{x="1"} 1\nb 2\na{x="2"} 3\n# HELP a late\n')
    assert [(f.name, len(f.samples), f.help) for f in families] == [
        ("a", 2, "late"),
        ("b", 1, None),
    ]


def test_sum_and_count_belong_to_a_summary_or_histogram_only() -> None:
    families = parse("# TYPE g gauge\ng 1\ng_sum 2\ng_count 3\n")
    assert [f.name for f in families] == ["g", "g_sum", "g_count"]
    families = parse("# TYPE s summary\ns_sum 2\ns_count 3\ns_bucket 1\n")
    assert [f.name for f in families] == ["s", "s_bucket"]


def test_declared_but_empty_families_are_left_out() -> None:
    assert parse("# HELP a x\n# TYPE b counter\n") == []
    assert parse("") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a 1", "no newline at the end"),
        ("a 1\nb", "no newline at the end"),
        ('a{b="\\x"} 1\n', "invalid escape sequence"),
        ('a{b="1",b="2"} 1\n', "duplicate label name"),
        ('a{__name__="x"} 1\n', "reserved"),
        ('a{1b="x"} 1\n', "invalid label name"),
        ('a{b="x" 1\n', "expected ',' or '}'"),
        ('a{b="x} 1\n', "expected a quoted value"),
        ("a{b} 1\n", "expected '='"),
        ("a\n", "no value"),
        ("a x\n", "expected a float"),
        ("a 0x1p3\n", "expected a float"),
        ("a 1e999\n", "expected a float"),
        ("a 1 2.5\n", "expected an integer timestamp"),
        ("a 1 99999999999999999999\n", "expected an integer timestamp"),
        ("a 1 2 3\n", "spurious text"),
        ("a-b 1\n", "invalid metric name"),
        ('{a="b"} 1\n', "invalid metric name"),
        ("# TYPE a gauge\n# TYPE a gauge\n", "second TYPE"),
        ("a 1\n# TYPE a gauge\n", "TYPE after its samples"),
        ("# HELP a x\n# HELP a y\n", "second HELP"),
        ("# TYPE a gaugey\n", "unknown metric type"),
        ("# TYPE a\n", "unknown metric type"),
        ("# HELP 1a x\n", "invalid metric name"),
        ("# HELP a\\x\n", "invalid metric name"),
        ("# HELP a bad \\t escape\n", "invalid escape sequence"),
        ("a 1\na 2\n", "duplicate series"),
        ('a{x="1",y="2"} 1\na{y="2",x="1"} 2\n', "duplicate series"),
        ("# TYPE h histogram\nh 1\n", "is not a sample of histogram"),
        ("# TYPE h histogram\nh_bucket 1\n", "needs a 'le' label"),
        ('# TYPE h histogram\nh_bucket{le="x"} 1\n', "expected a float as 'le'"),
        ("# TYPE s summary\ns 1\n", "needs a 'quantile' label"),
        ("a 1\r\n", "expected a float"),
    ],
)
def test_malformed_text_is_a_parse_error(text: str, reason: str) -> None:
    assert reason in error(text).reason


def test_the_error_names_the_line() -> None:
    assert error("a 1\n\n# c\nb x\n").line == 4
    assert str(error("a 1\nb")) == "line 2: no newline at the end of the text (an incomplete file?)"


def test_numbers_as_go_reads_them() -> None:
    for token, value in [
        ("1", 1.0),
        ("-0.5", -0.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("1E-2", 0.01),
        ("+Inf", math.inf),
        ("-inf", -math.inf),
        ("Infinity", math.inf),
    ]:
        assert parse_float(token) == value, token
    nan = parse_float("NaN")
    assert nan is not None and math.isnan(nan)
    for token in ("", "1_000", "0x10", "1e", "e1", "--1", "٣", "1.2.3", "1e400", " 1"):
        assert parse_float(token) is None, token
    assert parse_int64("-9223372036854775808") == -(2**63)
    assert parse_int64("9223372036854775808") is None
    assert parse_int64("0000000000000000000000001") == 1
    assert parse_int64("1" * 5000) is None  # beyond int()'s digit limit: no ValueError


# -- against prometheus_client ----------------------------------------------------------------
names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True).filter(
    lambda n: not n.endswith(("_sum", "_count", "_bucket", "_total", "_created", "_info"))
)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not n.startswith("__") and n not in ("le", "quantile")
)
label_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12
)  # anything, escapes included
values = st.floats(allow_nan=False) | st.integers(-(2**53), 2**53).map(float)


@st.composite
def registries(draw: st.DrawFn) -> CollectorRegistry:
    """A registry of prometheus_client metrics of every kind, with labels."""
    registry = CollectorRegistry()
    for name in draw(st.lists(names, min_size=1, max_size=5, unique=True)):
        kind = draw(st.sampled_from(["counter", "gauge", "histogram", "summary"]))
        labels = draw(st.lists(label_names, max_size=3, unique=True))
        doc = draw(st.text(max_size=20))
        made = {"counter": Counter, "gauge": Gauge, "histogram": Histogram, "summary": Summary}[
            kind
        ](name, doc, labels, registry=registry)
        for values_ in draw(st.lists(st.tuples(*[label_values] * len(labels)), max_size=3)):
            child = made.labels(*values_) if labels else made
            amount = abs(draw(values)) if kind == "counter" else draw(values)
            if kind == "counter":
                child.inc(min(amount, 1e300))  # type: ignore[attr-defined]
            elif kind == "gauge":
                child.set(amount)  # type: ignore[attr-defined]
            else:
                child.observe(amount)  # type: ignore[attr-defined]
            if not labels:
                break
    return registry


def key(
    name: str, labels: dict[str, str], value: float
) -> tuple[str, tuple[tuple[str, str], ...], str]:
    return name, tuple(sorted(labels.items())), repr(value)


@FUZZ
@given(registries())
def test_reads_what_prometheus_client_writes_as_its_own_parser_does(
    registry: CollectorRegistry,
) -> None:
    text = generate_latest(registry).decode()
    assert outcome(text, fast=True) == outcome(text, fast=False)
    ours = sorted(key(*s) for s in samples(parse(text)))
    theirs = sorted(
        key(s.name, s.labels, float(s.value))
        for f in text_string_to_metric_families(text)
        for s in f.samples
    )
    assert ours == theirs
    # help texts as written, less the blanks after the name (as Go; their parser strips more)
    helps = {f.name: f.help for f in parse(text)}
    for metric in registry.collect():
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        if name in helps:
            assert helps[name] == metric.documentation.lstrip(" \t")


@FUZZ
@given(registries(), st.data())
def test_a_prefix_cut_inside_a_line_is_an_error_and_at_a_line_end_a_prefix(
    registry: CollectorRegistry, data: st.DataObject
) -> None:
    text = generate_latest(registry).decode()
    # (a fraction, not an index: the text's _created values, and so its length, vary by run)
    cut = round(data.draw(st.floats(0, 1)) * len(text))
    prefix = text[:cut]
    if prefix == "" or prefix.endswith("\n"):
        got = samples(parse(prefix))
        assert got == samples(parse(text))[: len(got)]
    else:
        with pytest.raises(ParseError):
            parse(prefix)


# -- fuzzing -----------------------------------------------------------------------------------
ALPHABET = string.ascii_letters[:6] + '_:0123456789.eE+-#{}=",\\ \t\nInfNaHELPTYP\r\x00é'
TOKENS = st.sampled_from(
    [
        "# HELP ",
        "# TYPE ",
        "counter",
        "gauge",
        "histogram",
        "summary",
        "untyped",
        "m",
        "m_bucket",
        "m_sum",
        "m_count",
        "m_total",
        '{le="',
        '{quantile="',
        'a="',
        '"',
        ",",
        "}",
        " ",
        "\t",
        "\n",
        "\\",
        '\\"',
        "\\n",
        "1",
        "-2.5e3",
        "+Inf",
        "NaN",
        "1700000000000",
    ]
)


def outcome(text: str, fast: bool) -> str:
    try:
        return repr(parse(text, fast=fast))  # (repr: NaN equals itself there)
    except ParseError as exc:
        return f"error {exc}"


def check(text: str) -> None:
    """Parse `text`: families with valid content, or a ParseError; nothing else. The fast path
    for common sample lines gives what the general one gives."""
    assert outcome(text, fast=True) == outcome(text, fast=False)
    try:
        families = parse(text)
    except ParseError as exc:
        assert exc.line >= 1 and exc.reason
        return
    for family in families:
        assert family.samples and family.type in (
            "counter",
            "gauge",
            "histogram",
            "summary",
            "untyped",
        )
        for s in family.samples:
            assert isinstance(s.value, float)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in s.labels.items())


@FUZZ
@given(st.text())
@example('a{b="' + "\\\\" * 50_000 + "\n")
@example("a{" + 'b="",' * 20_000 + "} 1\n")
@example("# HELP a " + "\\" * 100_001 + "\n")
def test_arbitrary_text_is_parsed_or_rejected(text: str) -> None:
    check(text)


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=200))
def test_text_of_the_formats_characters_is_parsed_or_rejected(text: str) -> None:
    check(text)


@FUZZ
@given(st.lists(TOKENS, max_size=60).map("".join))
def test_token_soup_is_parsed_or_rejected(text: str) -> None:
    check(text)


@FUZZ
@given(
    registries(),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(ALPHABET), st.booleans()), max_size=5
    ),
)
def test_mutated_valid_text_is_parsed_or_rejected(
    registry: CollectorRegistry, edits: list[tuple[int, str, bool]]
) -> None:
    text = generate_latest(registry).decode()
    for position, char, insert in edits:
        i = position % (len(text) + 1)
        text = text[:i] + char + text[i + (0 if insert else 1) :]
    check(text)
