"""Shared by test_policy_rego.py and test_policy_opa.py: a gateway whose
decision chain is the built-in rules followed by another source, with the
Admin API on (for `admin explain`), and small request helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import botocore.exceptions

from conftest import Gateway, Proc, REPO, gateway_bin, gateway_env, make_keys, read_ready_file, render_config, unused_port, wait_for
from harness.config import toml_table
from harness.procs import ready_field

FIXTURE = REPO / "tests" / "fixtures" / "policy" / "s3.rego"
TOKEN = "admin-" + uuid.uuid4().hex

# A window that is never open (window.rego overrides the defaults of s3.rego).
CLOSED_WINDOW = "package s3gate\n\nwindow_start_ns := 0\n\nwindow_end_ns := 0\n"


def policy_dir(tmp: Path) -> Path:
    """A copy of the fixture policy plus a closed time window, in `tmp`."""
    d = tmp / "policies"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE, d / "s3.rego")
    (d / "window.rego").write_text(CLOSED_WINDOW)
    return d


def policy_tables(*entries: dict) -> str:
    out = []
    for e in entries:
        out += toml_table("policy", e)
    return "\n".join(out) + "\n"


def start_policy_gateway(tmp: Path, backend, policy: str, name: str) -> tuple[Gateway, str]:
    """`s3gate serve` with the suite's keys, rules and buckets plus the
    `[[policy]]` tables `policy`, the Admin API on; (gateway, gRPC URL)."""
    keys = make_keys()
    cfg = tmp / f"{name}.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + policy)
    ready, log = tmp / f"{name}.ready.json", tmp / f"{name}.log"
    env = gateway_env(backend, keys, "debug", S3GATE_ADMIN_TOKEN=TOKEN)
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--grpc-listen",
            "127.0.0.1:0", "--ready-file", str(ready)]  # fmt: skip
    proc = Proc(name, argv, log, env)
    info = wait_for(lambda: read_ready_file(ready), f"{name} ready file", proc)
    grpc = wait_for(ready_field(ready, "grpc"), f"{name} gRPC address", proc)
    host, port = info["s3"].rsplit(":", 1)
    return Gateway(proc, (host, int(port)), cfg, log, ready, keys, backend), f"http://{grpc}"


def explain(url: str, *args: str) -> dict:
    """`s3gate admin --json explain ARGS` against the control plane at `url`."""
    env = {k: v for k, v in os.environ.items() if k not in ("S3GATE_ADMIN_TOKEN", "S3GATE_CONTROL_PLANE")}
    r = subprocess.run([str(gateway_bin()), "admin", "--control-plane", url, "--token", TOKEN, "--json", "explain",
                        *args], capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 0, f"admin explain failed: {r.stderr}"
    return json.loads(r.stdout)


def status(call) -> int:
    """The HTTP status of a boto3 call (200 when it raised nothing)."""
    try:
        call()
        return 200
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


def error_code(call) -> str:
    try:
        call()
        return "OK"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


__all__ = ["Proc", "CLOSED_WINDOW", "FIXTURE", "TOKEN", "policy_dir", "policy_tables", "start_policy_gateway", "explain",
           "status", "error_code", "unique", "wait_for"]  # fmt: skip
