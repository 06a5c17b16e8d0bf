"""Executive: job success rate and SLO budget, GPU-hours used and lost, queue wait, time to
result and make-span, spend and cost."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from panels import (
    CLUSTER,
    NODE_QUERY,
    SLURM,
    bar_panel,
    dashboard,
    query,
    stat_panel,
    thresholds,
    ts_panel,
)
from prices import Prices, account_cost_expr, cost_per_success_expr, total_cost_expr

UID = "hpcobs-executive"
FINISHED = "hpcobs_slurm_jobs_finished_total"
RESOURCE = "hpcobs_slurm_job_resource_seconds_total"
WAIT = "hpcobs_slurm_job_queue_wait_seconds_bucket"
TIME_TO_RESULT = "hpcobs_slurm_job_time_to_result_seconds_bucket"
RUN = "hpcobs_slurm_job_run_seconds_bucket"
# Job states whose resource-time counts as lost to the system (cause="system" by default).
LOST_STATES = "node_fail|boot_fail"

SUCCESS_RATE = thresholds((None, "red"), (0.95, "orange"), (0.99, "green"))


def success_ratio(window: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return (
        f'sum{group} (increase({FINISHED}{{{SLURM}, cause!="system"}}[{window}]))\n'
        f"/\nsum{group} (increase({FINISHED}{{{SLURM}}}[{window}]))"
    )


def gpu_hours(window: str, states: str = "", by: str = "") -> str:
    group = f" by ({by})" if by else ""
    state = f', state=~"{states}"' if states else ""
    return f'sum{group} (increase({RESOURCE}{{{SLURM}, resource="gpu"{state}}}[{window}])) / 3600'


def wait_quantile(q: float, window: str, histogram: str = WAIT, matchers: str = "") -> str:
    return (
        f"histogram_quantile({q}, sum by (partition, le) "
        f"(increase({histogram}{{{SLURM}{matchers}}}[{window}])))"
    )


# Hours: 1 h orange, 1 day red (time to result and make-span are in hours to days).
HOURS = thresholds((None, "green"), (3600, "orange"), (86400, "red"))


def build(prices: Prices) -> db.Dashboard:
    board = dashboard(
        UID,
        "hpcobs / Executive",
        "Service level of the cluster for the selected period: job success, SLO error budgets, "
        "GPU-hours used and lost, queue wait and cost per successful job.",
        time_from="now-30d",
        refresh="15m",
        node_query=NODE_QUERY,
    )
    board = board.with_row(db.Row("Service level"))
    board = board.with_panel(
        stat_panel(
            "Job success rate",
            "Share of the jobs that finished in the period without a system failure "
            "(cause != system: NODE_FAIL, BOOT_FAIL, …). User errors (FAILED, TIMEOUT, "
            "CANCELLED, OUT_OF_MEMORY) are the users' business, not the service's.",
            [query(success_ratio("$__range"), "success rate", instant=True)],
            unit="percentunit",
            steps=SUCCESS_RATE,
            decimals=2,
        )
    )
    board = board.with_panel(
        bar_panel(
            "SLO error budget remaining",
            "Error budget left in each SLO's period (hpcobs-slo serve): 100% untouched, "
            "0% spent, below 0 overspent.",
            [
                query(
                    f"hpcobs_slo_error_budget_remaining_ratio{{{CLUSTER}}}", "{{slo}}", instant=True
                )
            ],
            unit="percentunit",
            steps=thresholds((None, "red"), (0.0, "orange"), (0.25, "green")),
            width=18,
            height=5,
            maximum=1,
        )
    )
    board = board.with_panel(
        ts_panel(
            "Job success rate by partition (daily)",
            "Per partition, share of the jobs finished in the previous 24 hours without a "
            "system failure.",
            [query(success_ratio("1d", "partition"), "{{partition}}")],
            unit="percentunit",
            width=24,
        )
    )
    board = board.with_row(db.Row("GPU-hours"))
    board = board.with_panel(
        stat_panel(
            "GPU-hours used",
            "GPU-hours allocated to the jobs that finished in the period, whatever their outcome.",
            [query(gpu_hours("$__range"), "GPU-hours", instant=True)],
            decimals=0,
        )
    )
    board = board.with_panel(
        stat_panel(
            "GPU-hours lost",
            "GPU-hours of the jobs that the system killed in the period (NODE_FAIL, BOOT_FAIL): "
            "work that has to be redone.",
            [query(gpu_hours("$__range", LOST_STATES) + " or vector(0)", "lost", instant=True)],
            steps=thresholds((None, "green"), (1, "orange")),
            decimals=0,
        )
    )
    board = board.with_panel(
        ts_panel(
            "GPU-hours per day",
            "GPU-hours of the jobs finished in the previous 24 hours, by partition, and the "
            "part lost to system failures.",
            [
                query(gpu_hours("1d", by="partition"), "{{partition}} used"),
                query(gpu_hours("1d", LOST_STATES), "lost (all partitions)"),
            ],
            width=12,
        )
    )
    board = board.with_row(db.Row("Queue wait"))
    board = board.with_panel(
        bar_panel(
            "Queue wait p50 / p95 per partition",
            "Time from eligible to start of the jobs that started in the period (median and "
            "95th percentile, interpolated within histogram buckets).",
            [
                query(wait_quantile(0.5, "$__range"), "{{partition}} p50", instant=True),
                query(wait_quantile(0.95, "$__range"), "{{partition}} p95", instant=True),
            ],
            unit="s",
            steps=thresholds((None, "green"), (3600, "orange"), (4 * 3600, "red")),
        )
    )
    board = board.with_panel(
        ts_panel(
            "Queue wait p50 / p95 over time",
            "Queue wait of the jobs started in the previous 6 hours, per partition.",
            [
                query(wait_quantile(0.5, "6h"), "{{partition}} p50"),
                query(wait_quantile(0.95, "6h"), "{{partition}} p95"),
            ],
            unit="s",
        )
    )
    board = board.with_row(db.Row("Time to result"))
    board = board.with_panel(
        bar_panel(
            "Time to result p50 / p95 per partition",
            "Submit to end of the jobs that COMPLETED in the period (median and 95th "
            "percentile, interpolated within histogram buckets): queue wait plus run time, "
            "what a user waits for a result.",
            [
                query(
                    wait_quantile(0.5, "$__range", TIME_TO_RESULT),
                    "{{partition}} p50",
                    instant=True,
                ),
                query(
                    wait_quantile(0.95, "$__range", TIME_TO_RESULT),
                    "{{partition}} p95",
                    instant=True,
                ),
            ],
            unit="s",
            steps=HOURS,
        )
    )
    board = board.with_panel(
        bar_panel(
            "Make-span p50 / p95 per partition",
            "Run time (end − start) of the jobs that COMPLETED in the period (median and 95th "
            "percentile, interpolated within histogram buckets).",
            [
                query(
                    wait_quantile(0.5, "$__range", RUN, ', state="completed"'),
                    "{{partition}} p50",
                    instant=True,
                ),
                query(
                    wait_quantile(0.95, "$__range", RUN, ', state="completed"'),
                    "{{partition}} p95",
                    instant=True,
                ),
            ],
            unit="s",
            steps=HOURS,
        )
    )
    board = board.with_row(db.Row("Cost"))
    board = board.with_panel(
        stat_panel(
            "Total spend",
            "Resource-hours of every job that finished in the period, failed ones included, "
            "priced per partition (dashboards/prices.yaml).",
            [query(total_cost_expr(prices, SLURM, "$__range"), "spend", instant=True)],
            unit=prices.unit,
            decimals=0,
            height=8,
        )
    )
    board = board.with_panel(
        bar_panel(
            "Spend by account (top 10)",
            "The 10 accounts that spent most in the period. Accounts have no partition "
            "(hpcobs_slurm_account_resource_seconds_total), so their resource-hours are priced "
            "at the period's average price of each resource over all partitions: the accounts "
            "add up to the total spend. Filtered by cluster only.",
            [query(account_cost_expr(prices, CLUSTER, "$__range"), "{{account}}", instant=True)],
            unit=prices.unit,
            width=18,
        )
    )
    board = board.with_panel(
        stat_panel(
            "Cost per successful job",
            "Resource-hours of every job that finished in the period (failed ones included) "
            "priced per partition (dashboards/prices.yaml), divided by the COMPLETED jobs.",
            [query(cost_per_success_expr(prices, SLURM, "$__range", False), "all", instant=True)],
            unit=prices.unit,
            decimals=2,
        )
    )
    board = board.with_panel(
        bar_panel(
            "Cost per successful job by partition",
            "As on the left, per partition.",
            [
                query(
                    cost_per_success_expr(prices, SLURM, "$__range", True),
                    "{{partition}}",
                    instant=True,
                )
            ],
            unit=prices.unit,
            width=18,
        )
    )
    return board
