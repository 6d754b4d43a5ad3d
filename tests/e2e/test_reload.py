"""Reloading the [[policy]] chain and [[identity]] sources without a restart:
SIGHUP to `s3gate serve` and `s3gate admin reload` (Admin `Reload`), and the
same against `s3gate controlplane` with a separate `s3gate dataplane`.

The config file is rewritten between steps: an entry whose settings change
(an SQL query against an in-memory SQLite database that denies alice), then
the entry removed. Decisions change at once — well inside the 30 s
decision_ttl the data plane would otherwise cache them for — because the
reload tells every data plane to forget them. A config that does not build
(an unknown bind) keeps the chain in force, and `s3gate admin reload` prints
why (section and kind). Nothing is mocked: real processes, boto3, the CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import botocore.exceptions

from conftest import _client, gateway_bin, gateway_env, make_keys, node_files, render_config, stop_gateway, unused_port
from harness.cluster import start_controlplane, start_dataplane
from harness.procs import ready_field
from recorder import launch_gateway

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex

DENY_ALICE = """
[[policy]]
kind = "builtin"

[[policy]]
kind = "sql"
url = "sqlite::memory:"
query = "SELECT 'deny' AS effect, 'denied by the reloaded query' AS reason WHERE :principal = 'alice'"
"""

BROKEN = """
[[policy]]
kind = "builtin"

[[policy]]
kind = "sql"
url = "sqlite::memory:"
query = "SELECT 'deny' AS effect WHERE :principl = 'alice'"
"""


def admin(grpc: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(gateway_bin()), "admin", "--control-plane", f"http://{grpc}", "--token", ADMIN_TOKEN, *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip


def outcome(client, bucket: str, key: str) -> str:
    try:
        client.get_object(Bucket=bucket, Key=key)
        return "allowed"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]


def becomes(client, bucket: str, key: str, want: str, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while (got := outcome(client, bucket, key)) != want:
        assert time.monotonic() < deadline, f"still {got}, not {want}, {within}s after the reload"
        time.sleep(0.1)


def test_sighup_and_admin_reload_in_serve(backend, tmp_path):
    gw = launch_gateway(tmp_path, backend, "s3gate-reload", extra_args=["--grpc-listen", "127.0.0.1:0"],
                        env={"S3GATE_ADMIN_TOKEN": ADMIN_TOKEN})  # fmt: skip
    try:
        grpc = ready_field(gw.ready_file, "grpc")()
        base = gw.config_path.read_text()
        key = f"reload/{uuid.uuid4().hex[:8]}.txt"
        backend.put("data-prod", key, b"x")
        alice = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
        assert outcome(alice, "data", key) == "allowed"  # now cached for decision_ttl (30s)

        # SIGHUP: the new entry applies at once
        gw.config_path.write_text(base + DENY_ALICE)
        gw.proc.popen.send_signal(signal.SIGHUP)
        becomes(alice, "data", key, "AccessDenied")
        assert gw.proc.alive()

        # admin reload: back to the built-in rules alone
        gw.config_path.write_text(base)
        r = admin(grpc, "reload")
        assert r.returncode == 0, r.stderr
        assert f"reloaded {gw.config_path}" in r.stdout and "policy[0]   builtin" in r.stdout, r.stdout
        assert "invalidated  policy" in r.stdout, r.stdout
        becomes(alice, "data", key, "allowed")

        # the same entry again, through --json
        gw.config_path.write_text(base + DENY_ALICE)
        r = admin(grpc, "--json", "reload")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert [p.split(" ")[0] for p in report["policy"]] == ["builtin", "sql"], report
        assert "sqlite::memory:" in report["policy"][1] and report["invalidated"] == "policy", report
        becomes(alice, "data", key, "AccessDenied")

        # a config that does not build: the chain in force stays, the CLI says why
        gw.config_path.write_text(base + BROKEN)
        r = admin(grpc, "reload")
        assert r.returncode != 0
        assert "[[policy]] sql" in r.stderr and ":principl" in r.stderr, r.stderr
        gw.proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in gw.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "SIGHUP with a broken config was not logged"
            time.sleep(0.1)
        assert gw.proc.alive()
        assert outcome(alice, "data", key) == "AccessDenied"
        # a file that does not parse: likewise
        gw.config_path.write_text(base + "\n[[policy]]\nkind = \"nope\"\n")
        r = admin(grpc, "reload")
        assert r.returncode != 0 and "does not load" in r.stderr, r.stderr
        assert outcome(alice, "data", key) == "AccessDenied"
    finally:
        stop_gateway(gw)


def test_admin_reload_in_distributed_mode(backend, tmp_path):
    """`s3gate admin reload` against `s3gate controlplane`: the data plane
    (a separate process, told over Watch) forgets its cached decisions."""
    keys = make_keys()
    config = tmp_path / "cluster.toml"
    base = render_config(backend, keys, unused_port())
    config.write_text(base)
    env = gateway_env(backend, keys, "debug", S3GATE_ADMIN_TOKEN=ADMIN_TOKEN)
    cp, cp_addr = start_controlplane(gateway_bin(), "cp-reload", config=config, env=env, **node_files(tmp_path, "cp-reload"))
    try:
        dp, dp_addr = start_dataplane(gateway_bin(), "dp-reload", control_planes=[f"http://{cp_addr}"], region="us-east-1",
                                      env=env, **node_files(tmp_path, "dp-reload"))  # fmt: skip
        try:
            key = f"reload/{uuid.uuid4().hex[:8]}.txt"
            backend.put("data-prod", key, b"x")
            alice = _client(f"http://{dp_addr}", keys["alice"].access_key, keys["alice"].secret_key)
            assert outcome(alice, "data", key) == "allowed"
            config.write_text(base + DENY_ALICE)
            r = admin(cp_addr, "reload")
            assert r.returncode == 0, r.stderr
            becomes(alice, "data", key, "AccessDenied")
            config.write_text(base + BROKEN)
            r = admin(cp_addr, "reload")
            assert r.returncode != 0 and ":principl" in r.stderr, r.stderr
            assert outcome(alice, "data", key) == "AccessDenied"
            # SIGHUP to the control plane process does the same
            config.write_text(base)
            cp.popen.send_signal(signal.SIGHUP)
            becomes(alice, "data", key, "allowed")
        finally:
            dp.stop()
    finally:
        cp.stop()


def test_reload_without_grpc_is_sighup_only(backend, tmp_path):
    """`serve` without --grpc-listen has no Admin API; SIGHUP still reloads."""
    gw = launch_gateway(tmp_path, backend, "s3gate-reload-hup")
    try:
        base = gw.config_path.read_text()
        key = f"reload/{uuid.uuid4().hex[:8]}.txt"
        backend.put("data-prod", key, b"x")
        alice = _client(gw.endpoint, gw.keys["alice"].access_key, gw.keys["alice"].secret_key)
        assert outcome(alice, "data", key) == "allowed"
        gw.config_path.write_text(base + DENY_ALICE)
        gw.proc.popen.send_signal(signal.SIGHUP)
        becomes(alice, "data", key, "AccessDenied")
    finally:
        stop_gateway(gw)
