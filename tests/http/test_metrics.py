"""/metrics: promtool accepts the bundled store's as it accepts etcd's, the names etcd uses are
there with etcd's types, counts move with the calls, and a real Prometheus scrapes both."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.harness.bundled import BundledStore
from tests.harness.etcd import EtcdMember
from tests.harness.procs import Child, find_tool, free_port
from tests.harness.stores import RunningStore
from tests.http.conftest import request
from tests.kv.tools import etcdctl

PROMTOOL = find_tool("promtool")
PROMETHEUS = find_tool("prometheus")

ETCD_NAMES = {
    "etcd_server_has_leader": "gauge",
    "etcd_server_leader_changes_seen_total": "counter",
    "etcd_server_proposals_committed_total": "gauge",
    "etcd_server_proposals_applied_total": "gauge",
    "etcd_server_proposals_pending": "gauge",
    "etcd_server_proposals_failed_total": "counter",
    "etcd_mvcc_db_total_size_in_bytes": "gauge",
    "etcd_mvcc_db_total_size_in_use_in_bytes": "gauge",
    "etcd_debugging_mvcc_keys_total": "gauge",
    "etcd_debugging_mvcc_watcher_total": "gauge",
    "etcd_debugging_mvcc_watch_stream_total": "gauge",
    "etcd_disk_wal_fsync_duration_seconds": "histogram",
    "etcd_disk_backend_commit_duration_seconds": "histogram",
    "etcd_network_client_grpc_received_bytes_total": "counter",
    "etcd_network_client_grpc_sent_bytes_total": "counter",
    "grpc_server_started_total": "counter",
    "grpc_server_handled_total": "counter",
    "process_resident_memory_bytes": "gauge",
}


def _types(text: str) -> dict[str, str]:
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    return types


def _promtool(text: str) -> tuple[int, set[str]]:
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    lines = {line for line in (done.stdout + done.stderr).splitlines() if line.strip()}
    return done.returncode, lines


def _value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {prefix}")


def test_metrics_names_types_and_promtool(store: RunningStore, etcd: EtcdMember) -> None:
    answer = request(store.url, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    ours = answer.raw.decode()
    theirs = request(etcd.url, "GET", "/metrics").raw.decode()
    for name, kind in ETCD_NAMES.items():
        assert _types(theirs).get(name) == kind, name  # the names are etcd's own
        assert _types(ours).get(name) == kind, name
    # promtool parses both; its only remarks on ours are the ones etcd's names earn too
    # (etcd's gauges named *_total).
    rc, remarks = _promtool(ours)
    etcd_rc, etcd_remarks = _promtool(theirs)
    assert rc in (0, 3) and etcd_rc in (0, 3)
    assert remarks <= etcd_remarks, remarks - etcd_remarks


def test_metrics_count_calls(bundled_kv: BundledStore, ns: bytes) -> None:
    store = bundled_kv
    before = request(store.url, "GET", "/metrics").raw.decode()
    put = 'grpc_server_handled_total{grpc_code="OK",grpc_method="Put"'
    started = 'grpc_server_started_total{grpc_method="Put"'
    fsyncs = "etcd_disk_wal_fsync_duration_seconds_count"
    for index in range(3):
        assert etcdctl(store.url, "put", f"{ns.decode()}{index}", "v").rc == 0
    etcdctl(store.url, "lease", "revoke", "123")  # NotFound
    after = request(store.url, "GET", "/metrics").raw.decode()
    assert _value(after, put) - (_value(before, put) if put in before else 0) == 3
    assert _value(after, started) - (_value(before, started) if started in before else 0) == 3
    assert _value(after, fsyncs) >= _value(before, fsyncs) + 1
    assert 'grpc_code="NotFound",grpc_method="LeaseRevoke"' in after
    assert _value(after, "etcd_debugging_mvcc_keys_total") >= 3
    assert _value(after, "etcd_network_client_grpc_received_bytes_total") > _value(
        before, "etcd_network_client_grpc_received_bytes_total"
    )


def _query(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=5) as answer:
        return json.load(answer)


def test_prometheus_scrapes_both(store: RunningStore, tmp_path: Path) -> None:
    """A real Prometheus scrapes the store: the target is up and etcd_server_has_leader is 1."""
    target = store.url.split("//", 1)[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: store\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    child = Child(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    child.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        up = leader = None
        while time.monotonic() < deadline:
            try:
                targets = _query(base, "/api/v1/targets")["data"]["activeTargets"]
                up = [t["health"] for t in targets]
                result = _query(base, "/api/v1/query?query=etcd_server_has_leader")["data"]
                leader = [r["value"][1] for r in result["result"]]
                if up == ["up"] and leader == ["1"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert up == ["up"], (up, child.output()[-2000:])
        assert leader == ["1"]
    finally:
        child.stop()
