"""Reloading the config file without a restart: SIGHUP to `s3gate serve` and
`s3gate admin reload` (Admin `Reload`), and the same against `s3gate
controlplane` (no Redis) with a separate `s3gate dataplane`.

The whole file reloads: keys, rules, backends and buckets (the state of a
control plane without Redis is the file), and the [[policy]] chain and
[[identity]] sources. A file that does not load keeps everything in force.

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
import re
import shutil
import signal
import subprocess
import time
import uuid

import botocore.exceptions
import pytest

from conftest import (BACKEND_SECRET_ENV, RULES, _client, gateway_bin, gateway_env, make_keys, node_files, render_config,
                      rules_config, stop_gateway, unused_port)  # fmt: skip
from harness.config import toml_table
from harness.cluster import Redis, gen_master_key, start_controlplane, start_dataplane
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


# --------------------------------------------------------------------------- the whole file

FRESH_FOR_ALICE = "\n".join(toml_table("rules", dict(effect="allow", principals=["alice"], actions=["s3:GetObject"], resources=["fresh/*"]))) + "\n"

ERIN = ("S3GATEERIN001", "csec-erin-" + uuid.uuid4().hex)


def key_table(key) -> str:
    """The [[keys]] table render_config writes for `key`."""
    secret = f"env:{key.from_env}" if key.from_env else key.secret_key
    return "\n".join(toml_table("keys", dict(access_key=key.access_key, secret_key=secret, principal=key.principal, groups=key.groups)))


def rewritten(base: str, keys) -> str:
    """The gateway's config with every kind of state changed: dave's key gone and
    erin's new; the ops rule (carol's grant on `other`) gone and a grant for
    bob on all of data new; a new backend and a new bucket `fresh` on it
    (backend bucket `public`, granted to erin); and base_domains changed,
    which needs a restart."""
    assert key_table(keys["dave"]) in base and rules_config(RULES) in base
    ops = [r for r in RULES if r[1] == ["group:ops"]]
    rules = [r for r in RULES if r not in ops] + [
        ("allow", ["bob"], ["s3:GetObject"], ["data/*"]),
        ("allow", ["erin"], ["s3:*"], ["fresh", "fresh/*"]),
    ]
    text = base.replace(key_table(keys["dave"]), "").replace(rules_config(RULES), rules_config(rules))
    text = text.replace('base_domains = ["s3.localhost"]', 'base_domains = ["s3.example"]')
    endpoint = re.search(r'endpoint = "(http://127\.0\.0\.1:\d+)"', base).group(1)
    extra = [
        *toml_table("backends", dict(name="fresh-be", endpoint=endpoint, region="us-east-1", addressing_style="path",
                                     credentials=dict(kind="static_hmac", access_key=re.search(r'access_key = "(BK[0-9A-F]+)"', base).group(1),
                                                      secret_key="env:" + BACKEND_SECRET_ENV))),  # fmt: skip
        *toml_table("buckets", dict(name="fresh", backend="fresh-be", backend_bucket="public")),
        *toml_table("keys", dict(access_key=ERIN[0], secret_key=ERIN[1], principal="erin")),
    ]
    # Tables after the rules: the file's top-level keys stay first.
    return text + "\n".join(extra) + "\n"


def wait_log(path, needle: str, count: int = 1, within: float = 10) -> str:
    """The log once `needle` occurs `count` times in it."""
    deadline = time.monotonic() + within
    while (text := path.read_text(errors="replace")).count(needle) < count:
        assert time.monotonic() < deadline, f"{needle!r} not logged {count} time(s) within {within}s"
        time.sleep(0.1)
    return text


def test_sighup_reloads_keys_rules_backends_and_buckets_in_serve(backend, tmp_path):
    # alice may read `fresh` from the start: before the reload it does not
    # exist (NoSuchBucket, remembered by the data plane), after it does.
    gw = launch_gateway(tmp_path, backend, "s3gate-reload-all", extra_args=["--grpc-listen", "127.0.0.1:0"],
                        env={"S3GATE_ADMIN_TOKEN": ADMIN_TOKEN}, extra_config=FRESH_FOR_ALICE)  # fmt: skip
    try:
        grpc = ready_field(gw.ready_file, "grpc")()
        base = gw.config_path.read_text()
        key = f"reload/{uuid.uuid4().hex[:8]}.txt"
        for bucket in ("data-prod", "other", "public"):
            backend.put(bucket, key, b"reloaded " + bucket.encode())
        c = {name: _client(gw.endpoint, k.access_key, k.secret_key) for name, k in gw.keys.items()}
        erin = _client(gw.endpoint, *ERIN)
        # Before: each answer is now cached (decisions, signing keys, routes).
        assert outcome(c["bob"], "data", key) == "AccessDenied"
        assert outcome(c["carol"], "other", key) == "allowed"
        assert outcome(c["dave"], "data", key) == "allowed"
        assert outcome(erin, "fresh", key) == "InvalidAccessKeyId"
        assert outcome(c["alice"], "fresh", key) == "NoSuchBucket"

        new = rewritten(base, gw.keys)
        gw.config_path.write_text(new)
        gw.proc.popen.send_signal(signal.SIGHUP)
        log = wait_log(gw.log_path, "config reloaded")
        # Counts, +added -removed ~changed; the running base_domains stay.
        line = next(l for l in log.splitlines() if "config reloaded" in l)
        for field in ("keys=+1 -1 ~0", "rules=+2 -1 ~0", "backends=+1 -0 ~0", "buckets=+1 -0 ~0"):
            assert field in line, line
        assert "take effect only after a restart" in log and "base_domains" in log
        becomes(c["bob"], "data", key, "allowed")  # a denial cached before is gone
        becomes(c["carol"], "other", key, "AccessDenied")  # a grant removed stops working
        becomes(c["dave"], "data", key, "InvalidAccessKeyId")  # a removed key is refused
        becomes(erin, "fresh", key, "allowed")  # a new key, rule, backend and bucket
        becomes(c["alice"], "fresh", key, "allowed")  # no longer a remembered unknown bucket
        assert erin.get_object(Bucket="fresh", Key=key)["Body"].read() == b"reloaded public"
        erin.put_object(Bucket="fresh", Key=key + ".new", Body=b"through fresh-be")
        assert backend.file("public", key + ".new").read_bytes() == b"through fresh-be"
        assert outcome(c["alice"], "data", key) == "allowed"  # untouched

        # Broken files keep all of it, and the log says where (file:line).
        refused = log.count("reload refused")
        for text, says in [
            (new + "\n[[keys]\n", f"{gw.config_path}:"),
            (new + "\n".join(toml_table("buckets", dict(name="orphan", backend="nope"))) + "\n", "backend \"nope\" is not configured"),
            (new.replace("env:" + BACKEND_SECRET_ENV, "env:S3GATE_E2E_SURELY_UNSET"), "S3GATE_E2E_SURELY_UNSET is not set"),
        ]:
            gw.config_path.write_text(text)
            gw.proc.popen.send_signal(signal.SIGHUP)
            refused += 1
            log = wait_log(gw.log_path, "reload refused", refused)
            last = [l for l in log.splitlines() if "reload refused" in l][-1]
            assert says in last and re.search(re.escape(str(gw.config_path)) + r":\d+:\d+", last), last
            assert gw.proc.alive()
            assert outcome(erin, "fresh", key) == "allowed"
            assert outcome(c["dave"], "data", key) == "InvalidAccessKeyId"
            assert outcome(c["bob"], "data", key) == "allowed"

        # The Admin API's reload reports the same counts (and never a secret).
        gw.config_path.write_text(new.replace("\n".join(toml_table("keys", dict(access_key=ERIN[0], secret_key=ERIN[1], principal="erin"))), ""))
        r = admin(grpc, "--json", "reload")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["state_from"] == "file" and report["keys"] == {"added": 0, "removed": 1, "changed": 0}, report
        assert report["rules"] == {"added": 0, "removed": 0, "changed": 0} and report["restart_needed"] == ["base_domains"], report
        assert ERIN[1] not in r.stdout
        becomes(erin, "fresh", key, "InvalidAccessKeyId")
        r = admin(grpc, "reload")
        assert r.returncode == 0 and "keys         0 added, 0 removed, 0 changed" in r.stdout, r.stdout
        assert "restart needed for: base_domains" in r.stdout, r.stdout
    finally:
        stop_gateway(gw)


def test_sighup_to_a_controlplane_without_redis_reaches_its_dataplane(backend, tmp_path):
    """`s3gate controlplane --config` (state in memory, from the file) and an
    `s3gate dataplane`: SIGHUP to the control plane; the data plane hears of
    the changed keys, rules and buckets over Watch, without a restart."""
    keys = make_keys()
    config = tmp_path / "cluster-all.toml"
    base = render_config(backend, keys, unused_port()) + FRESH_FOR_ALICE
    config.write_text(base)
    env = gateway_env(backend, keys, "debug")
    cp, cp_addr = start_controlplane(gateway_bin(), "cp-reload-all", config=config, env=env, **node_files(tmp_path, "cp-reload-all"))
    try:
        dp, dp_addr = start_dataplane(gateway_bin(), "dp-reload-all", control_planes=[f"http://{cp_addr}"], region="us-east-1",
                                      env=env, **node_files(tmp_path, "dp-reload-all"))  # fmt: skip
        try:
            key = f"reload/{uuid.uuid4().hex[:8]}.txt"
            for bucket in ("data-prod", "other", "public"):
                backend.put(bucket, key, b"x")
            c = {name: _client(f"http://{dp_addr}", k.access_key, k.secret_key) for name, k in keys.items()}
            erin = _client(f"http://{dp_addr}", *ERIN)
            assert outcome(c["bob"], "data", key) == "AccessDenied"
            assert outcome(c["carol"], "other", key) == "allowed"
            assert outcome(c["dave"], "data", key) == "allowed"
            assert outcome(c["alice"], "fresh", key) == "NoSuchBucket"
            config.write_text(rewritten(base, keys))
            cp.popen.send_signal(signal.SIGHUP)
            becomes(c["bob"], "data", key, "allowed")
            becomes(c["carol"], "other", key, "AccessDenied")
            becomes(c["dave"], "data", key, "InvalidAccessKeyId")
            becomes(erin, "fresh", key, "allowed")
            becomes(c["alice"], "fresh", key, "allowed")
            assert dp.alive() and cp.alive()
            # The data plane was told exactly these (plus the decisions). Its
            # log thread writes in batches (up to 20 ms late): wait for it.
            log_path = node_files(tmp_path, "dp-reload-all")["log_path"]
            deadline = time.monotonic() + 5
            while True:
                dp_log = log_path.read_text(errors="replace")
                if ("Key(\"S3GATEDAVE001\")" in dp_log and "Bucket(\"fresh\")" in dp_log) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert "Key(\"S3GATEDAVE001\")" in dp_log and "Bucket(\"fresh\")" in dp_log, dp_log[-3000:]
        finally:
            dp.stop()
    finally:
        cp.stop()


def test_with_redis_the_store_keeps_the_state(backend, tmp_path):
    """`s3gate controlplane --redis --config`: the store is the state's
    source of truth. SIGHUP and `admin reload` rebuild the sources and TTLs
    from the file, keep the state (a key removed from the file still works),
    and say that state changes go through the Admin API."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    redis = Redis(exe, tmp_path, tmp_path / "redis.log")
    redis.start()
    keys = make_keys()
    config = tmp_path / "seed.toml"
    base = render_config(backend, keys, unused_port())
    config.write_text(base)
    env = gateway_env(backend, keys, "debug", S3GATE_ADMIN_TOKEN=ADMIN_TOKEN, S3GATE_MASTER_KEY=gen_master_key(gateway_bin()))
    files = node_files(tmp_path, "cp-reload-redis")
    cp, cp_addr = start_controlplane(gateway_bin(), "cp-reload-redis", config=config, redis_url=redis.url, env=env, **files)
    try:
        dp, dp_addr = start_dataplane(gateway_bin(), "dp-reload-redis", control_planes=[f"http://{cp_addr}"], region="us-east-1",
                                      env=env, **node_files(tmp_path, "dp-reload-redis"))  # fmt: skip
        try:
            key = f"reload/{uuid.uuid4().hex[:8]}.txt"
            backend.put("data-prod", key, b"x")
            dave = _client(f"http://{dp_addr}", keys["dave"].access_key, keys["dave"].secret_key)
            assert outcome(dave, "data", key) == "allowed"
            config.write_text(rewritten(base, keys) + '\n[cache]\ndecision_ttl = "5s"\n')
            cp.popen.send_signal(signal.SIGHUP)
            log = wait_log(files["log_path"], "change only through the Admin API")
            assert "reload refused" not in log
            r = admin(cp_addr, "--json", "reload")
            assert r.returncode == 0, r.stderr
            report = json.loads(r.stdout)
            assert report["state_from"] == "store" and "keys" not in report, report
            assert report["cache_changed"] is False, report  # already in force since the SIGHUP
            r = admin(cp_addr, "reload")
            assert "state        kept: the store is its source of truth" in r.stdout, r.stdout
            # dave's key, gone from the file, is still in the store
            assert outcome(dave, "data", key) == "allowed"
            erin = _client(f"http://{dp_addr}", *ERIN)
            assert outcome(erin, "fresh", key) == "InvalidAccessKeyId"
        finally:
            dp.stop()
    finally:
        cp.stop()
        if redis.proc:
            redis.proc.stop()
