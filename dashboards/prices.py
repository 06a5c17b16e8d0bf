"""The per-partition price table (dashboards/prices.yaml) and the cost query built from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RESOURCES = ("cpu", "gpu")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.:-]+$")
RESOURCE_SECONDS = "hpcobs_slurm_job_resource_seconds_total"
ACCOUNT_SECONDS = "hpcobs_slurm_account_resource_seconds_total"
FINISHED = "hpcobs_slurm_jobs_finished_total"


class PriceError(ValueError):
    """A bad price table; the message names the key."""


@dataclass(frozen=True)
class Prices:
    currency: str
    default: dict[str, float]
    partitions: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        """The Grafana unit for amounts in this currency."""
        return f"currency{self.currency}"


def _rates(where: str, doc: Any) -> dict[str, float]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise PriceError(f"{where}: expected a mapping of resource to price, got {doc!r}")
    rates = {}
    for resource, price in doc.items():
        if resource not in RESOURCES:
            raise PriceError(
                f"{where}.{resource}: unknown resource (one of {', '.join(RESOURCES)})"
            )
        if isinstance(price, bool) or not isinstance(price, int | float) or not price >= 0:
            raise PriceError(f"{where}.{resource}: price must be a number >= 0, got {price!r}")
        rates[str(resource)] = float(price)
    return rates


def parse_prices(text: str) -> Prices:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise PriceError("the price table must be a mapping with currency, default, partitions")
    unknown = set(doc) - {"currency", "default", "partitions"}
    if unknown:
        raise PriceError(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    currency = doc.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise PriceError(f"currency: an ISO 4217 code such as EUR or USD, got {currency!r}")
    partitions_doc = doc.get("partitions") or {}
    if not isinstance(partitions_doc, dict):
        raise PriceError("partitions: expected a mapping of partition name to prices")
    partitions = {}
    for name, rates in partitions_doc.items():
        if not isinstance(name, str) or not _PARTITION.match(name):
            raise PriceError(f"partitions: bad partition name {name!r}")
        partitions[name] = _rates(f"partitions.{name}", rates)
    return Prices(currency, _rates("default", doc.get("default")), partitions)


def load_prices(path: Path) -> Prices:
    try:
        return parse_prices(path.read_text())
    except PriceError as exc:
        raise PriceError(f"{path}: {exc}") from exc


def _regex_literal(name: str) -> str:
    """A partition name as a regex inside a PromQL string (names are [A-Za-z0-9_.:-])."""
    return name.replace(".", "\\\\.")


def cost_expr(prices: Prices, selector: str, window: str, by: str = "partition") -> str:
    """PromQL: the cost of the jobs that finished in `window`, by partition (or `by` another
    of the terms' labels: `resource`).

    One term per (partition, resource) with a price, plus one per resource for the partitions
    not listed (at the default price); terms keep `partition` and `resource`, so they never
    collide under `or`.
    """
    terms = []

    def term(matchers: str, resource: str, price: float) -> str:
        return (
            f"sum by (partition, resource) (increase({RESOURCE_SECONDS}"
            f'{{{selector}, {matchers}resource="{resource}"}}[{window}])) * {price!r} / 3600'
        )

    for name, rates in sorted(prices.partitions.items()):
        for resource, price in sorted(rates.items()):
            if price > 0:
                terms.append(term(f'partition="{name}", ', resource, price))
    listed = "|".join(_regex_literal(name) for name in sorted(prices.partitions))
    for resource, price in sorted(prices.default.items()):
        if price > 0:
            exclude = f'partition!~"{listed}", ' if listed else ""
            terms.append(term(exclude, resource, price))
    if not terms:
        return "vector(0)"
    return f"sum by ({by}) (\n  " + "\n  or\n  ".join(terms) + "\n)"


def total_cost_expr(prices: Prices, selector: str, window: str) -> str:
    """PromQL: the cost of every job that finished in `window` (0 when none did)."""
    return f"sum({cost_expr(prices, selector, window)}) or vector(0)"


def account_cost_expr(prices: Prices, selector: str, window: str, top: int = 10) -> str:
    """PromQL: the cost of the jobs that finished in `window`, for the `top` accounts.

    hpcobs_slurm_account_resource_seconds_total has no partition, so each account's
    resource-seconds are priced at the period's average price of the resource over all
    partitions (the cost of the resource / its resource-seconds): the accounts' costs add up
    to the total cost. `selector` must not filter on partition (the account metric has none).
    """
    per_second = (
        f"({cost_expr(prices, selector, window, by='resource')})\n"
        f"/ (sum by (resource) (increase({RESOURCE_SECONDS}{{{selector}}}[{window}])) > 0)"
    )
    used = f"sum by (account, resource) (increase({ACCOUNT_SECONDS}{{{selector}}}[{window}]))"
    return (
        f"topk({top}, sum by (account) (\n{used}\n* on (resource) group_left ()\n({per_second})\n))"
    )


def cost_per_success_expr(prices: Prices, selector: str, window: str, by_partition: bool) -> str:
    """PromQL: cost of all finished jobs / COMPLETED jobs, per partition or overall."""
    cost = cost_expr(prices, selector, window)
    done = f'increase({FINISHED}{{{selector}, state="completed"}}[{window}])'
    if by_partition:
        return f"({cost})\n/ on (partition)\nsum by (partition) ({done})"
    return f"sum({cost})\n/\nsum({done})"
