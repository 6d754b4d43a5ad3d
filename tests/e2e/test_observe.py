"""Operating s3gate: the admin listener (/metrics, /healthz, /readyz) on each
process kind, the metrics the requests leave there, the audit log, and a real
Prometheus (Debian's) scraping two data planes.

Everything is a real process on 127.0.0.1: s3gate serve, or a control plane
plus data planes, the s3s-fs backend, boto3, and Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, _client, gateway_bin, gateway_env, make_keys, node_files, render_config
from harness.procs import Proc, free_port, start_with_ready_file, wait_for


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def series(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels…}` (labels a subset) in an
    exposition, summed over the samples that match; None if none does."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(m.group(4)), True
    return total if found else None


def start_serve(tmp: Path, backend, *extra: str, name: str = "obs"):
    keys = make_keys()
    cfg = tmp / f"{name}.toml"
    cfg.write_text(render_config(backend, keys, free_port()))
    files = node_files(tmp, name)
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--ready-file", str(files["ready"]), *extra]  # fmt: skip
    proc, s3 = start_with_ready_file(name, argv, files["ready"], "s3", files["log_path"], gateway_env(backend, keys, "info"))
    admin = json.loads(files["ready"].read_text())["admin"]
    return proc, s3, admin, keys


def test_metrics_health_and_audit_in_serve(backend, tmp_path):
    audit_path = tmp_path / "audit.jsonl"
    proc, s3, admin, keys = start_serve(tmp_path, backend, "--audit-log", str(audit_path))
    try:
        alice = _client(f"http://{s3}", keys["alice"].access_key, keys["alice"].secret_key)
        bob = _client(f"http://{s3}", keys["bob"].access_key, keys["bob"].secret_key)
        body = b"observed " * 1000
        alice.put_object(Bucket="data", Key="reports/obs.txt", Body=body)
        assert alice.get_object(Bucket="data", Key="reports/obs.txt")["Body"].read() == body
        # An explicit deny rule, and nothing allowing: both denied, told apart.
        with pytest.raises(ClientError) as denied:
            alice.get_object(Bucket="data", Key="secret/x")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError):
            bob.get_object(Bucket="data", Key="elsewhere/x")

        assert http_get(f"http://{admin}/healthz") == (200, "ok\n")
        assert http_get(f"http://{admin}/readyz") == (200, "ready\n")
        assert http_get(f"http://{admin}/nothing")[0] == 404
        status, text = http_get(f"http://{admin}/metrics")
        assert status == 200
        assert series(text, "s3gate_requests_total", op="PutObject", status="2xx", decision="allow", identity="key") == 1
        assert series(text, "s3gate_requests_total", op="GetObject", status="2xx", decision="allow") == 1
        assert series(text, "s3gate_requests_total", op="GetObject", status="4xx", decision="deny") == 2
        assert series(text, "s3gate_request_duration_seconds_count", op="GetObject") == 3
        assert series(text, "s3gate_time_to_first_byte_seconds_count") == 4
        assert series(text, "s3gate_sent_bytes_total") >= len(body)
        assert series(text, "s3gate_received_bytes_total") >= len(body)
        # alice's second request found her signing key cached.
        assert series(text, "s3gate_cache_hits_total", cache="signing_keys") >= 1
        assert series(text, "s3gate_cache_misses_total", cache="signing_keys") >= 1
        assert series(text, "s3gate_build_info", process="serve") == 1
        assert series(text, "s3gate_in_flight_requests") == 0
        for k in keys.values():
            assert k.secret_key not in text

        # The audit lines are written as each response body ends.
        def lines():
            try:
                return [json.loads(line) for line in audit_path.read_text().splitlines()]
            except FileNotFoundError:
                return []

        records = wait_for(lambda: r if len(r := lines()) >= 4 else None, "4 audit lines", proc)
        put, get, secret, nothing = records[:4]
        assert put["op"] == "PutObject" and put["action"] == "s3:PutObject" and put["decision"] == "allow"
        assert put["principal"] == "alice" and put["identity"] == "key" and put["bucket"] == "data"
        assert put["key"] == "reports/obs.txt" and put["status"] == 200 and put["bytes_in"] == len(body)
        assert put["decided_by"].startswith("rules:") and "allowed by rule" in put["reason"]
        assert get["op"] == "GetObject" and get["bytes_out"] == len(body) and get["status"] == 200
        assert secret["decision"] == "deny" and secret["status"] == 403 and secret["key"] == "secret/x"
        assert secret["decided_by"].startswith("rules:") and "denied by rule" in secret["reason"]
        # The default deny: no source decided.
        assert nothing["decision"] == "deny" and nothing["principal"] == "bob" and "decided_by" not in nothing
        assert all(r["request_id"] and r["client"] == "127.0.0.1" for r in records)
        text = audit_path.read_text()
        for k in keys.values():
            assert k.secret_key not in text and k.access_key not in text
        assert backend.creds.secret_key not in text
    finally:
        assert proc.stop() == (0, False)


def test_metrics_off_keeps_the_endpoint(backend, tmp_path):
    proc, s3, admin, keys = start_serve(tmp_path, backend, "--metrics", "false")
    try:
        alice = _client(f"http://{s3}", keys["alice"].access_key, keys["alice"].secret_key)
        alice.list_objects_v2(Bucket="data")
        status, text = http_get(f"http://{admin}/metrics")
        assert status == 200
        assert series(text, "s3gate_build_info", process="serve") == 1
        assert series(text, "s3gate_requests_total") is None
        assert series(text, "s3gate_cache_hits_total", cache="decisions") == 0
    finally:
        assert proc.stop() == (0, False)


class Fleet:
    """A control plane (state from the config file, in memory) and data
    planes, each with an admin listener."""

    def __init__(self, tmp: Path, backend):
        self.tmp, self.backend, self.keys = tmp, backend, make_keys()
        self.config = tmp / "fleet.toml"
        self.config.write_text(render_config(backend, self.keys, free_port()))
        self.env = gateway_env(backend, self.keys, "info")
        self.procs: dict[str, Proc] = {}
        self.admin: dict[str, str] = {}
        self.s3: dict[str, str] = {}

    def start_cp(self, name: str, listen: str = "127.0.0.1:0") -> str:
        files = node_files(self.tmp, name)
        argv = [str(gateway_bin()), "controlplane", "--config", str(self.config), "--listen", listen,
                "--admin-listen", "127.0.0.1:0", "--ready-file", str(files["ready"])]  # fmt: skip
        proc, grpc = start_with_ready_file(name, argv, files["ready"], "grpc", files["log_path"], self.env, append=True)
        self.procs[name], self.admin[name] = proc, json.loads(files["ready"].read_text())["admin"]
        return grpc

    def start_dp(self, name: str, control_plane: str) -> None:
        files = node_files(self.tmp, name)
        argv = [str(gateway_bin()), "dataplane", "--control-plane", f"http://{control_plane}", "--listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0", "--ready-file", str(files["ready"]), "--region", REGION]  # fmt: skip
        proc, s3 = start_with_ready_file(name, argv, files["ready"], "s3", files["log_path"], self.env)
        self.procs[name], self.s3[name] = proc, s3
        self.admin[name] = json.loads(files["ready"].read_text())["admin"]

    def client(self, dp: str, who: str = "alice"):
        return _client(f"http://{self.s3[dp]}", self.keys[who].access_key, self.keys[who].secret_key)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture
def fleet(tmp_path, backend):
    f = Fleet(tmp_path, backend)
    yield f
    f.stop()


def test_readiness_follows_the_control_plane(fleet):
    grpc = fleet.start_cp("cp")
    fleet.start_dp("dp", grpc)
    dp, cp = fleet.admin["dp"], fleet.admin["cp"]
    wait_for(lambda: http_get(f"http://{dp}/readyz")[0] == 200, "data plane ready", fleet.procs["dp"])
    assert http_get(f"http://{cp}/readyz") == (200, "ready\n")
    fleet.client("dp").put_object(Bucket="data", Key="ready.txt", Body=b"x")
    text = http_get(f"http://{dp}/metrics")[1]
    assert series(text, "s3gate_control_plane_calls_total", rpc="Authorize", result="ok") >= 1
    assert series(text, "s3gate_control_plane_call_duration_seconds_count", rpc="SigningKey") >= 1
    assert series(text, "s3gate_build_info", process="dataplane") == 1
    text = http_get(f"http://{cp}/metrics")[1]
    assert series(text, "s3gate_rpc_served_total", rpc="Authorize", result="ok") >= 1
    assert series(text, "s3gate_build_info", process="controlplane") == 1

    # No control plane: not ready (alive all the same); back when it is.
    assert fleet.procs.pop("cp").stop() == (0, False)
    wait_for(lambda: http_get(f"http://{dp}/readyz")[0] == 503, "data plane not ready", fleet.procs["dp"], timeout=10)
    status, why = http_get(f"http://{dp}/readyz")
    assert "no control plane reachable" in why
    assert http_get(f"http://{dp}/healthz") == (200, "ok\n")
    fleet.start_cp("cp", listen=grpc)
    wait_for(lambda: http_get(f"http://{dp}/readyz")[0] == 200, "data plane ready again", fleet.procs["dp"], timeout=15)


PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def test_prometheus_scrapes_both_data_planes(fleet, tmp_path):
    """Debian's Prometheus scrapes the admin listeners; PromQL over its HTTP
    API returns the request counters of both data planes."""
    grpc = fleet.start_cp("cp")
    fleet.start_dp("dp1", grpc)
    fleet.start_dp("dp2", grpc)
    targets = [fleet.admin[n] for n in ("cp", "dp1", "dp2")]
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: s3gate\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    port = free_port()
    prom = Proc("prometheus", [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                tmp_path / "prometheus.log")  # fmt: skip
    fleet.procs["prometheus"] = prom
    for dp in ("dp1", "dp2"):
        for i in range(3):
            fleet.client(dp).put_object(Bucket="data", Key=f"prom/{dp}-{i}", Body=b"p")

    def query(q: str):
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            status, text = http_get(url)
        except OSError:
            return None
        return json.loads(text)["data"]["result"] if status == 200 else None

    q = 'sum by (instance) (s3gate_requests_total{op="PutObject",decision="allow"})'
    result = wait_for(lambda: r if (r := query(q)) and len(r) == 2 else None, "both data planes in Prometheus", prom, timeout=60)
    by_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
    assert by_instance == {fleet.admin["dp1"]: 3.0, fleet.admin["dp2"]: 3.0}
    up = wait_for(lambda: r if (r := query("up == 1")) and len(r) == 3 else None, "3 targets up", prom, timeout=30)
    assert {r["metric"]["instance"] for r in up} == set(targets)
    info = query("s3gate_build_info")
    assert sorted(r["metric"]["process"] for r in info) == ["controlplane", "dataplane", "dataplane"]
