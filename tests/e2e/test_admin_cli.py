"""`s3gate admin` as an operator meets it, through the real binary: golden
error messages that say what to do (control plane unreachable, a URL without
http://, no token, a wrong token, the Admin API off), help that explains
rules, and a readable CREATED column."""

import json
import os
import re
import subprocess
import uuid
from datetime import datetime, timezone

import pytest

from conftest import Proc, gateway_bin, gateway_env, make_keys, node_files, render_config, unused_port, wait_for
from harness.cluster import start_controlplane
from harness.procs import ready_field

TOKEN = "admin-" + uuid.uuid4().hex

# What every "cannot reach" message ends with.
CHECK_URL = (
    "Is the control plane running, and is this its gRPC address (where `s3gate controlplane --listen` "
    "or `s3gate serve --grpc-listen` listens)? Set it with --control-plane or S3GATE_CONTROL_PLANE."
)


def admin(*args: str, url: str | None = None, token: str | None = None) -> subprocess.CompletedProcess:
    """`s3gate admin [--control-plane URL] [--token TOKEN] ARGS`, with neither
    taken from this process's environment."""
    argv = [str(gateway_bin()), "admin"]
    if url is not None:
        argv += ["--control-plane", url]
    if token is not None:
        argv += ["--token", token]
    env = {k: v for k, v in os.environ.items() if k not in ("S3GATE_ADMIN_TOKEN", "S3GATE_CONTROL_PLANE")}
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=env, timeout=30,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def failed(r: subprocess.CompletedProcess) -> str:
    """The error of a failed admin call: stderr, which it must have, and nothing on stdout."""
    assert r.returncode == 1, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert r.stdout == "", r.stdout
    return r.stderr


@pytest.fixture(scope="module")
def cp(backend, tmp_path_factory) -> str:
    """`s3gate serve` with the Admin API on (as the README shows it); its gRPC URL."""
    tmp = tmp_path_factory.mktemp("admin-cli")
    keys = make_keys()
    cfg = tmp / "s3gate.toml"
    cfg.write_text(render_config(backend, keys, unused_port()))
    ready = tmp / "ready.json"
    env = gateway_env(backend, keys, "info", S3GATE_ADMIN_TOKEN=TOKEN)
    proc = Proc("s3gate-admin-cli", [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
                                     "--grpc-listen", "127.0.0.1:0", "--ready-file", str(ready)], tmp / "s3gate.log", env)  # fmt: skip
    grpc = wait_for(ready_field(ready, "grpc"), "s3gate ready file with a gRPC address", proc)
    yield f"http://{grpc}"
    code, killed = proc.stop()
    assert not killed and code == 0, f"exit {code}, killed: {killed}"


def test_unreachable_control_plane():
    url = f"http://127.0.0.1:{unused_port()}"
    err = failed(admin("keys", "list", url=url, token="t"))
    assert err == f"s3gate: cannot reach the control plane at {url}: connection refused\n{CHECK_URL}\n"


def test_url_without_scheme():
    err = failed(admin("status", url="127.0.0.1:9090", token="t"))
    assert err == 's3gate: control-plane URL "127.0.0.1:9090" needs http:// in front: --control-plane http://127.0.0.1:9090\n'
    err = failed(admin("status", url="https://127.0.0.1:9090", token="t"))
    assert err == ('s3gate: control-plane URL "https://127.0.0.1:9090": https is not supported, control planes '
                   "serve plain gRPC; use http://127.0.0.1:9090\n")  # fmt: skip


def test_missing_token(cp):
    expected = ("s3gate: no admin token: pass --token TOKEN or set S3GATE_ADMIN_TOKEN to the token the control "
                "plane was started with (its --admin-token)\n")  # fmt: skip
    assert failed(admin("keys", "list", url=cp)) == expected
    assert failed(admin("keys", "list", url=cp, token="")) == expected


def test_wrong_token(cp):
    err = failed(admin("keys", "list", url=cp, token="not-" + TOKEN))
    assert err == (f"s3gate: the control plane at {cp} did not accept the admin token\n"
                   "Use the token it was started with (its --admin-token or S3GATE_ADMIN_TOKEN), "
                   "in --token or S3GATE_ADMIN_TOKEN.\n")  # fmt: skip


def test_admin_api_off(backend, tmp_path):
    """A control plane started without --admin-token serves no Admin API."""
    keys = make_keys()
    cfg = tmp_path / "cp.toml"
    cfg.write_text(render_config(backend, keys, unused_port()))
    env = {k: v for k, v in gateway_env(backend, keys, "info").items() if k != "S3GATE_ADMIN_TOKEN"}
    proc, addr = start_controlplane(gateway_bin(), "cp-no-admin", config=cfg, env=env, **node_files(tmp_path, "cp"))
    try:
        err = failed(admin("status", url=f"http://{addr}", token=TOKEN))
        assert err == (f"s3gate: the control plane at http://{addr} does not serve the Admin API\n"
                       "Start it with --admin-token (`s3gate serve` also needs --grpc-listen).\n")  # fmt: skip
    finally:
        proc.stop()


def test_a_refusal_is_the_control_planes_own_words(cp):
    rule = "no-such-rule-" + uuid.uuid4().hex[:8]
    assert failed(admin("rules", "delete", rule, url=cp, token=TOKEN)) == f's3gate: not found: rule "{rule}"\n'


def help_text(*args: str) -> str:
    r = subprocess.run([str(gateway_bin()), *args, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_rules_put_help_explains_principals_actions_and_resources():
    h = help_text("admin", "rules", "put")
    for needle in ["group:NAME", "everyone, including unsigned (anonymous) requests", "s3:Get*", "s3:*",
                   "data/reports/*", "every bucket and every object", "a matching deny beats any allow",
                   "--principal group:analysts"]:  # fmt: skip
        assert needle in h, f"{needle!r} not in:\n{h}"


def test_help_is_for_users():
    top = help_text()
    assert "S3GATE_LOG" in top, top
    for cmd in (["serve"], ["controlplane"], ["dataplane"], ["admin"], ["admin", "keys", "list"],
                ["admin", "keys", "revoke"], ["admin", "backends", "put"]):  # fmt: skip
        h = help_text(*cmd)
        assert "Tests pass" not in h and "127.0.0.1:0" not in h, f"{cmd}:\n{h}"
    admin_help = help_text("admin")
    assert "--worker-threads" not in admin_help and "--log-format" not in admin_help, admin_help
    assert "--log-format" in help_text("serve")
    assert "List access keys" in help_text("admin", "keys", "list")
    revoke = help_text("admin", "keys", "revoke")
    assert "The access key id" in revoke and "s3gate admin keys revoke S3G" in revoke, revoke


CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_keys_list_created_is_readable(cp):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    r = admin("--json", "keys", "create", "--principal", "zed", "--group", "admin-cli", url=cp, token=TOKEN)
    assert r.returncode == 0, r.stderr
    ak = json.loads(r.stdout)["access_key"]
    try:
        r = admin("keys", "list", url=cp, token=TOKEN)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert r.stdout.splitlines()[0].split() == ["ACCESS", "KEY", "PRINCIPAL", "GROUPS", "CREATED"]
        assert rows["S3GATEALICE01"].endswith("from config"), rows["S3GATEALICE01"]
        created = rows[ak].split()[-1]
        assert CREATED.fullmatch(created), rows[ak]
        when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert before <= when <= datetime.now(timezone.utc), created
        # --json: `created` stays Unix seconds; `created_at` is new.
        r = admin("--json", "keys", "list", url=cp, token=TOKEN)
        listed = {k["access_key"]: k for k in json.loads(r.stdout)}
        assert listed[ak]["created"] == int(when.timestamp()) and listed[ak]["created_at"] == created
        assert listed["S3GATEALICE01"]["created"] == 0 and listed["S3GATEALICE01"]["created_at"] is None
    finally:
        assert admin("keys", "revoke", ak, url=cp, token=TOKEN).returncode == 0
