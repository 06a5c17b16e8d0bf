"""Round-robin schedule and node identities of the MPI probe (exporters/probe/topology.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcobs.exporters.probe.topology import identities, partner_in, round_robin

pytestmark = pytest.mark.unit


@given(st.integers(min_value=0, max_value=64))
def test_round_robin_meets_every_pair_once_using_all_nodes_each_round(n: int) -> None:
    rounds = round_robin(n)
    if n < 2:
        assert rounds == []
        return
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    met = [pair for r in rounds for pair in r]
    assert sorted(met) == list(itertools.combinations(range(n), 2))
    for r in rounds:
        players = [p for pair in r for p in pair]
        assert len(players) == len(set(players))  # nobody plays twice in a round
        assert len(r) == n // 2  # everybody (but one bye for odd n) plays in every round


def test_partner_lookup() -> None:
    rounds = round_robin(4)
    for r in rounds:
        for a, b in r:
            assert partner_in(r, a) == b and partner_in(r, b) == a
    assert all(partner_in(r, 99) is None for r in rounds)
    odd = round_robin(3)
    assert sum(partner_in(r, 0) is None for r in odd) == 1  # one bye each


def test_distinct_hosts_are_nodes_led_by_their_first_rank() -> None:
    ident = identities(["a", "a", "b", "b", "c"])
    assert ident.mode == "host"
    assert ident.leaders == (0, 2, 4)
    assert ident.nodes == ("a", "b", "c")
    assert ident.rank_nodes == ("a", "a", "b", "b", "c")


def test_one_host_falls_back_to_rank_qualified_names() -> None:
    ident = identities(["vm"] * 4)
    assert ident.mode == "rank"
    assert ident.nodes == ("vm:0", "vm:1", "vm:2", "vm:3")
    assert ident.leaders == (0, 1, 2, 3)


def test_forced_modes() -> None:
    assert identities(["a", "b"], "rank").nodes == ("a:0", "b:1")
    single = identities(["vm", "vm"], "host")
    assert single.nodes == ("vm",) and single.leaders == (0,)
    with pytest.raises(ValueError):
        identities([])
    with pytest.raises(ValueError):
        identities(["a"], "bogus")  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(["a", "b", "c", "", " "]), min_size=1, max_size=16))
def test_identities_are_unique_per_leader(names: list[str]) -> None:
    ident = identities(names)
    assert len(ident.rank_nodes) == len(names)
    assert len(set(ident.nodes)) == len(ident.nodes)
    assert all(ident.rank_nodes[r] == n for r, n in zip(ident.leaders, ident.nodes, strict=True))
