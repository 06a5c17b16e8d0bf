"""hpcobs SLO engine: SLO specs → Prometheus rules, and a daemon computing SLIs and burn rates."""
