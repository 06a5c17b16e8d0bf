"""Who is a "node" in the pairwise phase, and which pairs meet in which round (pure).

Node identity. Each rank reports a name: `$HPCOBS_PROBE_NODE_NAME` if set, else its
hostname. Ranks are then grouped (`identities`):

- `host`: ranks with the same name are one node; its lowest rank speaks for it.
- `rank`: every rank is its own node, named `<name>:<rank>`.
- `auto` (default): `host` when that yields at least two nodes, else `rank`. So a
  multi-node allocation compares nodes, while a node-local run (every rank on one host, as
  under the systemd timer or in tests) compares ranks, under unique names.

Schedule. `round_robin(n)` is the circle method of a round-robin tournament: every pair of
the n participants meets exactly once, every participant is in at most one pair per round,
in n − 1 rounds for even n (n rounds with one bye each for odd n). Each round therefore uses
all nodes at once instead of measuring n(n − 1)/2 pairs one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

IdentityMode = Literal["auto", "host", "rank"]
IDENTITY_MODES: tuple[IdentityMode, ...] = ("auto", "host", "rank")


@dataclass(frozen=True)
class Identities:
    """The node name of every rank, and the ranks that take part in the pairwise phase."""

    mode: Literal["host", "rank"]
    rank_nodes: tuple[str, ...]  # node name per rank, indexed by rank
    leaders: tuple[int, ...]  # one rank per node, ascending

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.rank_nodes[r] for r in self.leaders)


def identities(names: Sequence[str], mode: IdentityMode = "auto") -> Identities:
    """Group ranks (whose reported names are `names[rank]`) into nodes."""
    if not names:
        raise ValueError("no ranks")
    if mode not in IDENTITY_MODES:
        raise ValueError(f"identity mode must be one of {', '.join(IDENTITY_MODES)}")
    cleaned = [name.strip() or "unknown" for name in names]
    distinct = len(set(cleaned))
    if mode == "host" or (mode == "auto" and distinct >= 2):
        leaders: dict[str, int] = {}
        for rank, name in enumerate(cleaned):
            leaders.setdefault(name, rank)
        return Identities("host", tuple(cleaned), tuple(sorted(leaders.values())))
    qualified = tuple(f"{name}:{rank}" for rank, name in enumerate(cleaned))
    return Identities("rank", qualified, tuple(range(len(cleaned))))


Round = list[tuple[int, int]]


def round_robin(n: int) -> list[Round]:
    """Rounds of pairs (i, j), i < j, of participants 0..n-1 (the circle method)."""
    if n < 0:
        raise ValueError("n must not be negative")
    if n < 2:
        return []
    players: list[int | None] = [*range(n), *([None] if n % 2 else [])]
    m = len(players)
    rounds: list[Round] = []
    for _ in range(m - 1):
        pairs: Round = []
        for i in range(m // 2):
            a, b = players[i], players[m - 1 - i]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(sorted(pairs))
        # keep the first player fixed, rotate the others by one
        players = [players[0], players[-1], *players[1:-1]]
    return rounds


def partner_in(round_pairs: Round, me: int) -> int | None:
    """The participant `me` meets in this round, or None (a bye)."""
    for a, b in round_pairs:
        if a == me:
            return b
        if b == me:
            return a
    return None
