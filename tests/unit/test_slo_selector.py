"""PromQL selectors: parsing, rendering, client-side matching, bucket-bound spellings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.slo.selector import (
    Matcher,
    Selector,
    SelectorError,
    number_label_values,
    number_matcher,
    parse_matchers,
    parse_selector,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("up", Selector("up")),
        ("  a:b_total  ", Selector("a:b_total")),
        ('x_total{a="b"}', Selector("x_total", (Matcher("a", "=", "b"),))),
        (
            'x_total{ a = \'b\' , c!="d", e=~`f.*`, g!~"h|i", }',
            Selector(
                "x_total",
                (
                    Matcher("a", "=", "b"),
                    Matcher("c", "!=", "d"),
                    Matcher("e", "=~", "f.*"),
                    Matcher("g", "!~", "h|i"),
                ),
            ),
        ),
        ('x{a="q\\"uote\\\\ \\n"}', Selector("x", (Matcher("a", "=", 'q"uote\\ \n'),))),
        ('x{a="caf\\u00e9"}', Selector("x", (Matcher("a", "=", "café"),))),
        ("x{}", Selector("x")),
    ],
)
def test_parse(text: str, expected: Selector) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('sum(rate(x_total{a="b"}[5m]))', "hpcobs applies increase() and sum() itself"),
        ("x_total[5m]", "hpcobs applies increase() and sum() itself"),
        ("x_total + y_total", "hpcobs applies increase() and sum() itself"),
        ('{__name__="x"}', "put the metric name first"),
        ('x{__name__="x"}', "name the metric before the braces"),
        ('x{a="b"', "close the braces"),
        ("x{a=b}", 'quote it: label="value"'),
        ('x{a=~"("}', "fix the regex"),
        ('x{a~"b"}', 'write label="value"'),
        ('x{a="b}', "close the quotes"),
        ("", "counter selector"),
        ("9x", "counter selector"),
    ],
)
def test_errors_say_how_to_fix(text: str, hint: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert hint in info.value.hint


def test_render_round_trips() -> None:
    sel = parse_selector('x_total{ a = \'b"c\' , d=~"e|f" }')
    assert sel.promql() == 'x_total{a="b\\"c",d=~"e|f"}'
    assert parse_selector(sel.promql()) == sel


def test_matching_follows_promql() -> None:
    sel = parse_selector('x{a="1", b!="2", c=~"3|4", d!~"5.*", e=""}')
    assert sel.matches({"a": "1", "b": "x", "c": "4", "d": "6"})
    assert not sel.matches({"a": "1", "c": "34"})  # regexes are anchored
    assert not sel.matches({"a": "1", "c": "3", "d": "55"})
    assert not sel.matches({"a": "1", "b": "2", "c": "3"})
    assert not sel.matches({"a": "1", "c": "3", "e": "set"})  # e="" means: label absent
    assert sel.matches({"a": "1", "c": "3"})  # absent labels are empty
    assert parse_matchers('{partition=~"gpu.*"}') == (Matcher("partition", "=~", "gpu.*"),)
    assert parse_matchers("partition=\"a\", x!='y'") == (
        Matcher("partition", "=", "a"),
        Matcher("x", "!=", "y"),
    )


@pytest.mark.parametrize(
    ("value", "spellings"),
    [
        (3600, {"3600", "3600.0"}),
        (0.005, {"0.005"}),
        (1e6, {"1000000", "1000000.0", "1e+06"}),  # client_golang writes 1e+06
        (1.5e-5, {"1.5e-05"}),
        (123456, {"123456", "123456.0"}),
        (float("inf"), {"+Inf"}),
    ],
)
def test_bucket_bounds_match_every_exporter_spelling(value: float, spellings: set[str]) -> None:
    assert set(number_label_values(value)) == spellings
    m = number_matcher("le", value)
    for s in spellings:
        assert m.matches(s)
    assert not m.matches("36000") and not m.matches("3600.5")


@given(st.text(max_size=60))
def test_arbitrary_text_raises_only_selector_errors(text: str) -> None:
    try:
        sel = parse_selector(text)
    except SelectorError as exc:
        assert exc.hint
    else:
        assert parse_selector(sel.promql()) == sel


@given(
    st.from_regex(r"[a-z_][a-z0-9_:]{0,10}", fullmatch=True),
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
            st.sampled_from(["=", "!="]),
            st.text(max_size=10),
        ),
        max_size=4,
    ),
)
def test_rendered_selectors_parse_back(metric: str, matchers: list[tuple[str, str, str]]) -> None:
    matchers = [m for m in matchers if m[0] != "__name__"]
    sel = Selector(metric, tuple(Matcher(label, op, value) for label, op, value in matchers))  # type: ignore[arg-type]
    assert parse_selector(sel.promql()) == sel
