"""`clusterd node --metrics-port`: a running unit, reconcile passes and journal lines show in its
/metrics; promtool accepts it and a real Prometheus scrapes the node and the store together."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import Registry
from tests.fleet.conftest import NodeFactory, eventually
from tests.harness.bundled import start_bundled
from tests.harness.procs import Child, find_tool, free_port
from tests.http.conftest import request

PROMTOOL = find_tool("promtool")
PROMETHEUS = find_tool("prometheus")
LOOP = '[Service]\nExecStart=/bin/sh -c "while true; do echo tick; sleep 0.2; done"\n'


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def _value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _query(base: str, query: str) -> list[Any]:
    with urllib.request.urlopen(f"{base}/api/v1/query?query={query}", timeout=5) as answer:
        return json.load(answer)["data"]["result"]


async def test_node_metrics_and_a_prometheus_scrape(tmp_path: Path) -> None:
    store = start_bundled(tmp_path / "store")
    nodes = NodeFactory(store.url, "/fleet-metrics/", tmp_path)
    port = free_port()
    client = make_client([store.url])
    prometheus = None
    try:
        nodes.start("n1", "--metrics-port", str(port))
        registry = Registry(client, nodes.prefix)
        await registry.create_job("tick.service", LOOP)
        await registry.set_target_state("tick.service", "launched")

        async def running() -> bool:
            try:
                text = _metrics(port)
            except OSError:
                return False
            return (
                _value(text, 'clusterd_node_units{state="active"}') == 1
                and _value(text, "clusterd_journal_lines_written_total") >= 3
                and _value(text, "clusterd_engine_reconciles_total") >= 1
            )

        await eventually(running, within=30, what="the unit active in the metrics")
        text = _metrics(port)
        assert _value(text, "clusterd_engine_is_leader") == 1
        assert _value(text, "clusterd_engine_reconcile_duration_seconds_count") >= 1
        assert _value(text, "clusterd_node_unit_restarts_total") == 0
        done = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert request(f"http://127.0.0.1:{port}", "GET", "/nope").status == 404

        config = tmp_path / "prometheus.yml"
        target = store.url.split("//", 1)[1]
        config.write_text(
            "global: {scrape_interval: 1s}\nscrape_configs:\n"
            f"  - job_name: store\n    static_configs: [{{targets: ['{target}']}}]\n"
            f"  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        )
        web = free_port()
        prometheus = Child(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            tmp_path / "prometheus.log",
        )
        prometheus.start()
        base = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 60
        up: list[Any] = []
        units: list[Any] = []
        while time.monotonic() < deadline:
            try:
                up = sorted((r["metric"]["job"], r["value"][1]) for r in _query(base, "up"))
                units = _query(base, 'clusterd_node_units{state="active"}')
            except OSError:
                pass
            if up == [("node", "1"), ("store", "1")] and units:
                break
            time.sleep(0.5)
        assert up == [("node", "1"), ("store", "1")], prometheus.output()[-2000:]
        assert units[0]["value"][1] == "1"
    finally:
        if prometheus is not None:
            prometheus.stop()
        nodes.stop_all()
        await client.close()
        store.stop()
