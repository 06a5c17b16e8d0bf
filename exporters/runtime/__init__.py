"""The exporter runtime shared by every hpcobs daemon.

Modules, one concept each:

- `collector`: the `Collector` interface and `CollectorSpec` (how a collector is declared);
- `scrape`: runs the enabled collectors concurrently under a per-scrape deadline and adds
  `hpcobs_collector_up` / `hpcobs_collector_duration_seconds`;
- `webconfig`: the exporter-toolkit `--web.config.file` (TLS, basic auth);
- `server`: the HTTP(S) server: `/metrics`, `/healthz`, the landing page;
- `cli`: flags in the Prometheus exporters' style, also read from `--config.file`;
- `log`: logfmt / JSON logging;
- `app`: wires the above into a daemon's `main()`.
"""
