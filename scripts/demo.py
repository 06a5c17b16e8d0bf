"""`make demo`: the hpcobs node exporter on this machine, plus a local Prometheus scraping it.

Prints the URLs and a few live values, then keeps running (refreshing the values) until
Ctrl-C. Everything binds 127.0.0.1; state lives in ./demo-state (removed on exit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STATE = REPO / "demo-state"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> None:
        log = (STATE / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (STATE / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise SystemExit(f"demo: {name} exited with {proc.returncode}:\n" + "\n".join(tail))

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def show(prom: str) -> None:
    rows = [
        ("up (exporter scraped by Prometheus)", 'up{job="hpcobs-node"}'),
        ("collectors up", 'hpcobs_collector_up{job="hpcobs-node"}'),
        ("collector durations (s)", 'hpcobs_collector_duration_seconds{job="hpcobs-node"}'),
        ("build", 'hpcobs_build_info{job="hpcobs-node"}'),
        ("series served", 'scrape_samples_scraped{job="hpcobs-node"}'),
    ]
    print(time.strftime("--- %H:%M:%S ---"))
    for title, expr in rows:
        try:
            result = query(prom, expr)
        except OSError as exc:
            print(f"  {title}: query failed: {exc}")
            continue
        if not result:
            print(f"  {title}: (no data yet)")
        for r in result:
            labels = {
                k: v for k, v in r["metric"].items() if k not in ("__name__", "job", "instance")
            }
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            print(f"  {title}{' {' + shown + '}' if shown else ''}: {r['value'][1]}")
    sys.stdout.flush()


def main() -> int:
    for tool in ("prometheus",):
        if shutil.which(tool) is None:
            print(f"demo: {tool} not found; run scripts/bootstrap.sh", file=sys.stderr)
            return 1
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    exporter_port, prom_port = pick_port(9946), pick_port(9090)
    exporter = f"127.0.0.1:{exporter_port}"
    prom = f"http://127.0.0.1:{prom_port}"
    (STATE / "prometheus.yml").write_text(
        "global: {scrape_interval: 5s, evaluation_interval: 5s}\n"
        "scrape_configs:\n"
        f"  - job_name: hpcobs-node\n    static_configs: [{{targets: ['{exporter}']}}]\n"
    )
    stack = Stack()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        stack.start(
            "hpcobs-node-exporter",
            [str(BIN / "hpcobs-node-exporter"), f"--web.listen-address={exporter}"],
        )
        stack.start(
            "prometheus",
            [
                "prometheus",
                f"--config.file={STATE / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                f"--storage.tsdb.path={STATE / 'tsdb'}",
            ],
        )
        print("hpcobs demo")
        print(f"  node exporter : http://{exporter}/  (metrics: http://{exporter}/metrics)")
        print(f"  prometheus    : {prom}/  (targets: {prom}/targets)")
        print(f"  logs          : {STATE}/")
        print("waiting for Prometheus to scrape the exporter (up to 30 s)...", flush=True)
        deadline = time.monotonic() + 30
        while True:
            stack.check()
            try:
                if any(r["value"][1] == "1" for r in query(prom, 'up{job="hpcobs-node"}')):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print("demo: Prometheus did not report up=1 within 30 s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"up=1 after {30 - (deadline - time.monotonic()):.1f} s. Ctrl-C to stop.")
        once = os.environ.get("HPCOBS_DEMO_ONCE") == "1"
        while True:
            show(prom)
            if once:
                return 0
            for _ in range(30):
                stack.check()
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        stack.stop()
        shutil.rmtree(STATE, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
