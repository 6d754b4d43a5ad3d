#!/usr/bin/env python3
"""s3gate benchmark harness: the same requests direct to a backend and through
s3gate, interleaved in one run, on 127.0.0.1 only.

Started by bench/run.sh (which builds the binaries and checks the tools).
Standard library only. See BENCHMARKS.md for the method and the scenarios.

Processes (all on 127.0.0.1, ports picked by the kernel or probed free):
  s3s-fs      a signature-verifying S3 server (RUST_LOG=error)
  nginx       a static upstream: GET from files, PUT via the dav module
  s3gate      one per (scenario, upstream) — per round for S4 — so peak RSS
              and caches are per scenario
  loadgen     bench/loadgen (Rust, one thread), one process per measurement
  S1g/S4g     distributed mode instead of `s3gate serve`: a private
              redis-server (no persistence), `s3gate controlplane` seeded from
              the same config, `s3gate dataplane` asking it over gRPC

Every measurement is bounded in time and request count, every child process
has a timeout, and everything started here is stopped here (SIGTERM, then
SIGKILL) — also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from harness import procs  # noqa: E402
from harness.cluster import Redis, gen_master_key, start_controlplane, start_dataplane  # noqa: E402
from harness.config import q, toml_table  # noqa: E402
from harness.procs import free_port, listening_ports, start_with_ready_file, status_kib, wait_for  # noqa: E402
REGION = "us-east-1"
BUCKET = "bench"
MiB = 1 << 20
GiB = 1 << 30

# --------------------------------------------------------------------------- settings

FULL = dict(
    rounds=3,
    s1_duration=15.0,
    s5_duration=15.0,
    s4_duration=10.0,
    s4_pool=250_000,
    large_size=GiB,
    warmup=2.0,
    cold_principals=5_000,
)
QUICK = dict(
    rounds=1,
    s1_duration=3.0,
    s5_duration=3.0,
    s4_duration=2.0,
    s4_pool=20_000,
    large_size=128 * MiB,
    warmup=0.5,
    cold_principals=500,
)

DIST_SCENARIOS = ("S1g", "S4g")  # through controlplane + dataplane + Redis (class Distributed)
# S1s: S1 with temporary keys from STS against S1 with a static key, on one
# gateway; STS: cold AssumeRoleWithWebIdentity calls. Both need a real OIDC
# provider (tests/idp, `npm ci --prefix tests/idp`).
IDP_SCENARIOS = ("S1s", "STS")
ROLE_ARN = "arn:aws:iam::000000000000:role/bench"

SMALL_COUNT = 100  # S1: distinct 4 KiB objects rotated over
MIX_COUNT = 100  # S5: distinct 64 KiB objects read, and keys written

# --------------------------------------------------------------------------- processes

class Proc(procs.Proc):
    """A process whose log is appended to (reruns share a work directory)."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None):
        super().__init__(name, argv, log, env, append=True)


atexit.register(procs.stop_all)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            out += [int(x) for x in text]
    except OSError:
        pass
    return out


def reset_peak_rss(pid: int) -> bool:
    """Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    return busy, busy + f[3] + f[4]


def wait_quiet(max_wait: float, threshold: float = 0.10) -> float:
    """Waits (bounded) until the machine is idle between measurements — other
    builds and test suites share these two cores — and returns the busy
    fraction of the last one-second sample."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = machine_busy()
        time.sleep(1.0)
        b1, t1 = machine_busy()
        frac = (b1 - b0) / max(1, t1 - t0)
        if frac <= threshold or time.monotonic() > deadline:
            if frac > threshold:
                print(f"  (machine still {frac:.0%} busy after waiting {max_wait:.0f}s; measuring anyway)", flush=True)
            return frac
        time.sleep(2.0)


# --------------------------------------------------------------------------- upstreams


class Upstream:
    name: str
    proc: Proc
    port: int
    access_key: str
    secret_key: str
    pids: list[int]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.addr}"


class S3sFs(Upstream):
    def __init__(self, work: Path, root: Path):
        self.name = "s3s-fs"
        exe = shutil.which("s3s-fs") or str(Path.home() / ".cargo/bin/s3s-fs")
        self.access_key = "BK" + secrets.token_hex(8).upper()
        self.secret_key = "bsec-" + secrets.token_urlsafe(24)
        self.proc = Proc(
            "s3s-fs",
            [exe, "--host", "127.0.0.1", "--port", "0", "--access-key", self.access_key, "--secret-key", self.secret_key, str(root)],
            work / "s3s-fs.log",
            env={**os.environ, "RUST_LOG": "error"},
        )
        self.port = wait_for(lambda: listening_ports(self.proc.pid), "s3s-fs to listen", self.proc)[0]
        self.pids = [self.proc.pid]


NGINX_CONF = """
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    open_file_cache max=10000 inactive=60s;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


def start_nginx(work: Path, name: str, render) -> tuple["Proc", int]:
    """Starts nginx with the config `render(port)` on a free port (retrying if
    another process took the port first); returns the master process and port."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    (work / "nginx-tmp").mkdir(exist_ok=True)
    for attempt in range(5):
        port = free_port()
        conf = work / f"{name}.conf"
        conf.write_text(render(port))
        proc = Proc(name, [exe, "-e", str(work / f"{name}-error.log"), "-c", str(conf)], work / f"{name}.log")
        try:
            wait_for(lambda: port_open(port), f"{name} to listen", proc, timeout=10)
            return proc, port
        except RuntimeError:
            proc.stop()
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


class Nginx(Upstream):
    def __init__(self, work: Path, root: Path, workers: int):
        self.name = "nginx"
        self.access_key = "NGINXIGNORESKEYS"
        self.secret_key = "nginx-does-not-verify-signatures"
        self.proc, self.port = start_nginx(work, "nginx", lambda port: NGINX_CONF.format(workers=workers, work=work, port=port, root=root))
        # Workers are the master's children; they do the work.
        self.pids = wait_for(lambda: children(self.proc.pid) if len(children(self.proc.pid)) >= workers else None, "nginx workers", self.proc)


NGINX_PROXY_CONF = """
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    proxy_temp_path {work}/nginx-tmp/proxy-ref;
    upstream backend {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffer_size 64k;
            proxy_buffers 8 256k;
            proxy_busy_buffers_size 512k;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}
    }}
}}
"""


class NginxProxy:
    """Reference, not a competitor: nginx as a plain reverse proxy (1 worker,
    no authentication, no re-signing) in front of the nginx upstream. It shows
    what any user-space proxy hop costs on this machine (S1, S2 rows labelled
    `nginx-proxy`); its CPU is reported in the s3gate columns."""

    def __init__(self, work: Path, upstream: Upstream, workers: int = 1):
        self.proc, port = start_nginx(work, "nginx-proxy", lambda port: NGINX_PROXY_CONF.format(work=work, port=port, upstream=upstream.addr, workers=workers))
        self.addr = f"127.0.0.1:{port}"
        self.pids = wait_for(lambda: children(self.proc.pid) if len(children(self.proc.pid)) >= workers else None, "nginx proxy workers", self.proc)
        self.pid = self.pids[0]  # peak RSS: the first worker's, as with one

    def stop(self) -> None:
        self.proc.stop()

    def watch(self) -> list[str]:
        # Every worker under one name: the load generator sums them.
        return [arg for pid in self.pids for arg in ("--watch", f"s3gate={pid}")]


# --------------------------------------------------------------------------- gateway


class Gateway:
    def __init__(self, exe: Path, work: Path, name: str, upstream: Upstream, keys: "Keys", log_level: str = "info", extra_env: dict | None = None, issuer: str | None = None, extra_config: str = "",
                 extra_args: list[str] | None = None, wrapper: list[str] | None = None, start_timeout: float = 30):
        extra_env = extra_env or {}
        self.name = name
        cfg = work / f"{name}.toml"
        cfg.write_text(render_config(upstream, keys, issuer) + extra_config)
        ready = work / f"{name}.ready.json"
        env = {**os.environ, "S3GATE_LOG": log_level, **extra_env}
        argv = (wrapper or []) + [str(exe), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--ready-file", str(ready)] + (extra_args or [])
        self.proc, self.addr = start_with_ready_file("s3gate", argv, ready, "s3", work / f"{name}.log", env, append=True, timeout=start_timeout)
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.stop()
        truncate_log(self.proc.log_path)

    def watch(self) -> list[str]:
        return ["--watch", f"s3gate={self.pid}"]


def own_env(extra: dict) -> dict:
    """os.environ without inherited S3GATE_* settings (a stray S3GATE_CONFIG or
    S3GATE_REDIS must not change what is measured), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("S3GATE_")}, **extra}


def redis_commands(redis: Redis) -> dict[str, int]:
    """`INFO commandstats` as {command: calls}."""
    out = {}
    try:
        text = redis.call("INFO", "commandstats").decode(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            for kv in rest.split(","):
                if kv.startswith("calls="):
                    out[name[len("cmdstat_"):]] = int(kv[len("calls="):])
    return out


class Distributed:
    """s3gate in distributed mode: a private redis-server (no persistence), one
    `s3gate controlplane` seeded from the same config file as `serve`, and one
    `s3gate dataplane` asking it over gRPC. Clients talk to the data plane;
    `pid` is the data plane's, so it is watched as "s3gate" like `serve`."""

    def __init__(self, exe: Path, work: Path, name: str, upstream: Upstream, keys: "Keys", log_level: str = "info", extra_env: dict | None = None, redis_bin: str = "redis-server"):
        extra_env = extra_env or {}
        self.name = name
        self.procs: list[Proc] = []
        try:
            self._start(exe, work, name, upstream, keys, log_level, extra_env, redis_bin)
        except BaseException:
            self.stop()
            raise

    def _start(self, exe, work, name, upstream, keys, log_level, extra_env, redis_bin):
        # Redis: a free port (retried if another process takes it first),
        # nothing on disk, readiness by PING.
        rdir = work / f"{name}.redis"
        rdir.mkdir(exist_ok=True)
        self.redis = Redis(redis_bin, rdir, work / f"{name}.redis.log", name="redis-server", loglevel="warning", append_log=True)
        self.redis.start(attempts=5, timeout=15)
        self.procs.append(self.redis.proc)
        master_key = gen_master_key(exe, env=own_env({}))
        env = own_env({"S3GATE_LOG": log_level, "S3GATE_MASTER_KEY": master_key, "S3GATE_CLUSTER_TOKEN": secrets.token_hex(24), **extra_env})

        cfg = work / f"{name}.toml"
        cfg.write_text(render_config(upstream, keys))
        # Seeding 5,000 keys (each secret sealed under the master key) takes a moment.
        self.cp, self.cp_addr = start_controlplane(
            exe, "s3gate-controlplane", config=cfg, redis_url=self.redis.url, env=env,
            ready=work / f"{name}.cp.ready.json", log_path=work / f"{name}.cp.log", append_log=True, timeout=120,
        )  # fmt: skip
        self.procs.append(self.cp)
        self.dp, self.addr = start_dataplane(
            exe, "s3gate-dataplane", control_planes=[f"http://{self.cp_addr}"], region=REGION, env=env,
            ready=work / f"{name}.dp.ready.json", log_path=work / f"{name}.log", append_log=True,
        )  # fmt: skip
        self.procs.append(self.dp)
        self.pid = self.dp.pid
        self.proc = self.dp
        # Best effort: let the data plane's Watch stream reach the control
        # plane before measuring. The Decisions channel connects on the first
        # request, which the timed window pays (as S4 on `serve` pays its
        # first key-cache misses).
        deadline = time.monotonic() + 5
        while not self._cp_conns() and time.monotonic() < deadline and self.dp.alive():
            time.sleep(0.05)

    def _cp_conns(self) -> list[str]:
        """Established TCP connections from the data plane to the control plane."""
        port = int(self.cp_addr.rsplit(":", 1)[1])
        return [f[1] for f in procs.tcp_sockets() if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) == port]

    def watch(self) -> list[str]:
        return ["--watch", f"s3gate={self.dp.pid}", "--watch", f"controlplane={self.cp.pid}", "--watch", f"redis={self.redis.proc.pid}"]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        for p in self.procs:
            if p is not self.redis.proc:
                truncate_log(p.log_path)
        self.procs = []


def truncate_log(p: Path) -> None:
    # Access logs of a full run add up to gigabytes; keep the tail only.
    try:
        if p.stat().st_size > 4 * MiB:
            with open(p, "rb") as f:
                f.seek(-MiB, os.SEEK_END)
                tail = f.read()
            p.write_bytes(b"[... truncated by the harness ...]\n" + tail)
    except OSError:
        pass


class SqlGrants:
    """The cold rules of render_config as rows of a grants table, in a
    database of its own on the PostgreSQL server at `postgres_url` (made
    here with psql, dropped at the end; skipped when there is no psql or no
    server) and in a SQLite file: S4sql's `[[policy]] kind = "sql"`."""

    SCHEMA = ("CREATE TABLE grants (principal text, bucket text, prefix text, suffix text, action text, effect text);"
              "INSERT INTO grants VALUES ('group:cold', 'bench', 'cold/', '', 's3:GetObject', 'allow'),"
              " ('group:cold', 'bench', 'cold/', '.secret', 's3:GetObject', 'deny');")  # fmt: skip
    # No scope_prefix: every answer is for the exact key, as the built-in
    # rules' are here.
    QUERY = ("SELECT effect FROM grants WHERE bucket = :bucket AND action = :action"
             " AND principal IN ({groups})"
             " AND substr(:key, 1, length(prefix)) = prefix"
             " AND substr(:key, length(:key) - length(suffix) + 1) = suffix")  # fmt: skip
    PG_GROUPS = "SELECT 'group:' || g FROM jsonb_array_elements_text(:groups::jsonb) AS g"
    SQLITE_GROUPS = "SELECT 'group:' || value FROM json_each(:groups)"

    def __init__(self, work: Path, postgres_url: str):
        self.admin_url = postgres_url
        self.pg_name = f"s3gate_bench_{secrets.token_hex(6)}"
        base, _, _ = postgres_url.rpartition("/")
        self.pg_url = f"{base}/{self.pg_name}"
        self.sqlite = work / "grants.db"
        self.pg = False

    def psql(self, url: str, sql: str) -> bool:
        exe = shutil.which("psql")
        if exe is None:
            return False
        r = subprocess.run([exe, "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        if r.returncode != 0:
            print(f"  S4sql: psql: {r.stderr.strip()[:300]}", flush=True)
        return r.returncode == 0

    def __enter__(self) -> "SqlGrants":
        import sqlite3

        with sqlite3.connect(self.sqlite) as c:
            c.executescript(self.SCHEMA)
        c.close()
        self.pg = self.psql(self.admin_url, f'CREATE DATABASE "{self.pg_name}"') and self.psql(self.pg_url, self.SCHEMA)
        if not self.pg:
            print("  S4sql: no PostgreSQL (psql and a server at --postgres-url): SQLite only", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.pg:
            self.psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def configs(self) -> list[tuple[str, str]]:
        def policy(url: str, groups: str) -> str:
            return "\n".join(toml_table("policy", dict(kind="sql", url=url, query=self.QUERY.format(groups=groups), timeout="1s"))) + "\n"

        out = [("postgres", policy(self.pg_url, self.PG_GROUPS))] if self.pg else []
        return out + [("sqlite", policy(f"sqlite://{self.sqlite}", self.SQLITE_GROUPS))]


class Keys:
    """The gateway's client keys: one hot principal, many cold ones."""

    def __init__(self, work: Path, cold: int):
        self.hot = ("BENCHHOT00000001", "hot-" + secrets.token_urlsafe(24))
        self.cold = [(f"BENCHCOLD{i:06d}", f"cold-{i}-" + secrets.token_urlsafe(18)) for i in range(cold)]
        self.cold_file = work / "cold-creds.txt"
        self.cold_file.write_text("".join(f"{a} {s}\n" for a, s in self.cold))


# `--policy`: the [[policy]] tables appended to every gateway config (set in
# main). "none": no [[policy]] (the built-in rules alone); "builtin": the same
# chain spelled out; "rego"/"opa": bench/policy/bench.rego, which decides
# exactly as the rules below (cold group: cold/* except *.secret, exact
# scope), alone in the chain, evaluated in-process or by the OPA stand-in.
POLICY_TABLES = ""


def render_config(up: Upstream, keys: Keys, issuer: str | None = None) -> str:
    out = [
        'listen = "127.0.0.1:0"',
        f"region = {q(REGION)}",
        *toml_table("backends", dict(name="upstream", endpoint=up.endpoint, region=REGION, addressing_style="path",
                                     access_key=up.access_key, secret_key=up.secret_key)),
        *toml_table("buckets", dict(name=BUCKET, backend="upstream")),
        *toml_table("keys", dict(access_key=keys.hot[0], secret_key=keys.hot[1], principal="hot")),
    ]
    for i, (a, s) in enumerate(keys.cold):
        out += toml_table("keys", dict(access_key=a, secret_key=s, principal=f"cold{i:06d}", groups=["cold"]))
    out += toml_table(
        "rules", dict(effect="allow", principals=["hot"], actions=["s3:*"], resources=[BUCKET, f"{BUCKET}/*"]),
        "The hot principal: every key of the bucket, so decisions are bucket-scoped (one cache entry).",
    )
    out += toml_table(
        "rules", dict(effect="allow", principals=["group:cold"], actions=["s3:GetObject"], resources=[f"{BUCKET}/cold/*"]),
        "Cold principals: the keys under cold/ ...",
    )
    out += toml_table(
        "rules", dict(effect="deny", principals=["group:cold"], actions=["s3:GetObject"], resources=[f"{BUCKET}/cold/*.secret"]),
        "... except *.secret ones: a glob that depends on the whole key, so every decision is exact-scoped "
        "(one control-plane call and one cache entry per key; S4 measures cold decisions).",
    )
    if issuer:
        out += toml_table("oidc", dict(name="bench", issuer=issuer, audiences=["s3gate"], principal_claim="sub", groups_claim="groups"))
        out += toml_table("roles", dict(arn=ROLE_ARN, oidc="bench", groups=["sts-hot"], max_session="12h"))
        out += toml_table(
            "rules", dict(effect="allow", principals=["group:sts-hot"], actions=["s3:*"], resources=[BUCKET, f"{BUCKET}/*"]),
            "Sessions of the bench role: the same bucket-wide allow as the hot key (S1s).",
        )
    return "\n".join(out) + "\n" + POLICY_TABLES


_SOURCE_URLS: dict[str, str] = {}


def source_url(kind: str, work: Path) -> str:
    """The address of the bench's remote decision source of `kind`, started
    once per bench run and kept until it ends: "opa" (OPA's REST data API
    over bench.rego, tests/harness/opa_server.py) or "plugin" (bench.rego's
    decisions as an SDK plugin, bench/policy/bench_plugin.py)."""
    if kind not in _SOURCE_URLS:
        ready = work / f"{kind}.ready.json"
        if kind == "opa":
            argv = [sys.executable, str(REPO / "tests/harness/opa_server.py"), "--port", "0", "--ready-file", str(ready),
                    str(REPO / "bench" / "policy" / "bench.rego")]  # fmt: skip
        else:
            argv = [sys.executable, str(REPO / "bench/policy/bench_plugin.py"), "--ready-file", str(ready)]
        proc = procs.Proc(kind, argv, work / f"{kind}.log")
        info = wait_for(lambda: procs.read_ready_file(ready), f"the bench's {kind} source", proc)
        _SOURCE_URLS[kind] = (f"http://{info['addr']}/v1/data/s3gate/decision" if kind == "opa" else f"http://{info['grpc']}")
    return _SOURCE_URLS[kind]


POLICY_KINDS = ("none", "builtin", "rego", "opa", "plugin")


def policy_tables(policy: str, work: Path) -> str:
    """The [[policy]] tables of `--policy` (one source alone in the chain,
    deciding as the bench's [[rules]]); starts the OPA stand-in or the
    plugin for "opa" and "plugin"."""
    if policy == "none":
        return ""
    if policy == "builtin":
        return "\n".join(toml_table("policy", dict(kind="builtin"))) + "\n"
    if policy == "rego":
        return "\n".join(toml_table("policy", dict(kind="rego", files=[str(REPO / "bench" / "policy" / "bench.rego")]))) + "\n"
    if policy in ("opa", "plugin"):
        return "\n".join(toml_table("policy", dict(kind=policy, url=source_url(policy, work), timeout="1s"))) + "\n"
    raise SystemExit(f"--policy {policy}: one of {', '.join(POLICY_KINDS)}")


def assume_role(gw: "Gateway", token: str, seconds: int = 43200) -> tuple[str, str, str]:
    """AssumeRoleWithWebIdentity at the gateway: (access key, secret, session token)."""
    import urllib.parse
    import urllib.request
    import xml.etree.ElementTree as ET

    form = urllib.parse.urlencode(dict(Action="AssumeRoleWithWebIdentity", Version="2011-06-15", RoleArn=ROLE_ARN,
                                       RoleSessionName="bench", WebIdentityToken=token, DurationSeconds=str(seconds)))
    req = urllib.request.Request(f"http://{gw.addr}/", data=form.encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = ET.fromstring(r.read())
    ns = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
    c = doc.find(".//sts:Credentials", ns)
    if c is None:
        raise RuntimeError(f"AssumeRoleWithWebIdentity: no Credentials in {ET.tostring(doc)[:300]!r}")
    return tuple(c.findtext(f"sts:{f}", namespaces=ns) or "" for f in ("AccessKeyId", "SecretAccessKey", "SessionToken"))  # type: ignore[return-value]


# --------------------------------------------------------------------------- data


def pattern(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def seed_data(root: Path, cfg: dict) -> None:
    b = root / BUCKET
    for d in ("small", "mix/get", "mix/put", "cold"):
        (b / d).mkdir(parents=True, exist_ok=True)
    small = pattern(4096, 1)
    for i in range(SMALL_COUNT):
        (b / "small" / f"{i:06d}").write_bytes(small)
    mix = pattern(64 << 10, 2)
    for i in range(MIX_COUNT):
        (b / "mix" / "get" / f"{i:06d}").write_bytes(mix)
    # The large object: a 1 MiB block repeated (written once per work dir).
    big = b / "large-get"
    if not big.exists() or big.stat().st_size != cfg["large_size"]:
        block = pattern(MiB, 3)
        with open(big, "wb") as f:
            for _ in range(cfg["large_size"] // MiB):
                f.write(block)
    # Cold keys: hard links to the 4 KiB files, one per unique request
    # (at most 60,000 links per file: ext4 allows 65,000).
    existing = len(os.listdir(b / "cold"))
    for i in range(existing, cfg["s4_pool"]):
        os.link(b / "small" / f"{i // 60_000:06d}", b / "cold" / f"{i:06d}")


# --------------------------------------------------------------------------- loadgen


class Runner:
    def __init__(self, loadgen: Path, log: Path):
        self.loadgen = loadgen
        self.log = log

    def run(self, args: list[str], timeout: float) -> dict:
        argv = [str(self.loadgen)] + args
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"loadgen timed out after {timeout}s: {' '.join(argv)}")
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(a if 'secret' not in a else '***' for a in argv)}\n# {time.monotonic() - t0:.1f}s rc={p.returncode}\n{p.stdout}{p.stderr}\n")
        if p.returncode != 0:
            raise RuntimeError(f"loadgen failed ({p.returncode}): {p.stderr.strip()}")
        return json.loads(p.stdout)


def creds_args(up_or_keys) -> list[str]:
    a, s = up_or_keys
    return ["--access-key", a, "--secret-key", s]


def kernel_softirq_threads() -> list[int]:
    """ksoftirqd/N: loopback networking overflows into them under load. They are
    watched so that their CPU is not mistaken for other work on the machine."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().startswith("ksoftirqd/"):
                    out.append(int(d))
            except OSError:
                pass
    return out


KSOFTIRQD = kernel_softirq_threads()


def watch_args(gw: "Gateway | Distributed | None", up: Upstream) -> list[str]:
    out = [arg for i, pid in enumerate(KSOFTIRQD) for arg in ("--watch", f"ksoftirqd{i}={pid}")]
    if gw:
        out += gw.watch()
    out += [arg for i, pid in enumerate(up.pids) for arg in ("--watch", f"upstream{i}={pid}")]
    return out


def upstream_cpu(res: dict) -> float | None:
    vals = [v for k, v in res["cpu_s"].items() if k.startswith("upstream") and v is not None]
    return sum(vals) if vals else None


# --------------------------------------------------------------------------- scenarios


class Bench:
    def __init__(self, args, cfg: dict, work: Path, gw_exe: Path, runner: Runner):
        self.args = args
        self.cfg = cfg
        self.work = work
        self.gw_exe = gw_exe
        self.runner = runner
        self.results: list[dict] = []
        self.keys = Keys(work, cfg["cold_principals"])
        self.gw_count = 0
        self._idp = None

    def gateway(self, up: Upstream, log_level: str = "info", issuer: str | None = None, extra_config: str = "", extra_args: list[str] | None = None,
                wrapper: list[str] | None = None, start_timeout: float = 30) -> Gateway:
        self.gw_count += 1
        env = dict(kv.split("=", 1) for kv in self.args.gateway_env)
        return Gateway(self.gw_exe, self.work, f"s3gate-{self.gw_count:03d}-{up.name}", up, self.keys, log_level, env, issuer, extra_config, extra_args,
                       wrapper, start_timeout)  # fmt: skip

    def idp(self):
        """The OIDC provider of S1s/STS (oauth2-mock-server), started once."""
        if self._idp is None:
            from harness.idp import Idp

            self._idp = Idp(self.work).start()
        return self._idp

    def web_identity_token(self) -> str:
        return self.idp().token({"sub": "bench-sts", "aud": "s3gate", "groups": ["bench"]}, expires_in=43200)

    def distributed(self, up: Upstream, log_level: str = "info") -> Distributed:
        self.gw_count += 1
        env = dict(kv.split("=", 1) for kv in self.args.gateway_env)
        return Distributed(self.gw_exe, self.work, f"s3gate-{self.gw_count:03d}-dist-{up.name}", up, self.keys, log_level, env, self.args.redis_bin)

    def record(self, scenario: str, upstream: str, mode: str, rnd: int, res: dict, extra: dict | None = None) -> dict:
        row = {"scenario": scenario, "upstream": upstream, "mode": mode, "round": rnd, "at": dt.datetime.now().strftime("%H:%M:%S"), **res, **(extra or {})}
        cpu = res.get("cpu_s", {})
        if cpu.get("unaccounted") is not None and res.get("elapsed_s"):
            # Share of the machine's CPU capacity used by processes outside the benchmark.
            row["other_cpu_pct"] = max(0.0, 100 * cpu["unaccounted"] / (res["elapsed_s"] * (os.cpu_count() or 1)))
        self.results.append(row)
        self.progress(row)
        return row

    def progress(self, r: dict) -> None:
        if r.get("mode") == "load" or "rps" in r:
            lat = r.get("latency_us") or {}
            msg = f"{r['rps']:>9.0f} req/s  p50 {lat.get('p50', 0):>7.0f} µs  p99 {lat.get('p99', 0):>7.0f} µs  errors {r['errors']}"
            if r.get("rate"):
                msg += f"  late {r.get('late', 0)}"
        else:
            msg = f"{r['mb_s']:>8.0f} MB/s  status {r['status']}"
        if r.get("gw_cpu_us_per_req") is not None:
            msg += f"  s3gate {r['gw_cpu_us_per_req']:.1f} µs CPU/req"
        if r.get("gw_cpu_s_per_gib") is not None:
            msg += f"  s3gate {r['gw_cpu_s_per_gib']:.2f} CPU-s/GiB"
        if r.get("gw_peak_rss_kib"):
            msg += f"  peak RSS {r['gw_peak_rss_kib'] / 1024:.1f} MiB"
        if r.get("cp_cpu_us_per_req") is not None:
            msg += f"  control plane {r['cp_cpu_us_per_req']:.1f} µs CPU/req"
        if r.get("redis_cpu_s") is not None:
            calls = sum((r.get("redis_calls") or {}).values())
            msg += f"  redis {r['redis_cpu_pct']:.1f}% of a core, {calls} commands"
        if r.get("other_cpu_pct") is not None:
            msg += f"  other CPU {r['other_cpu_pct']:.0f}%"
        print(f"  {r['at']} {r['scenario']:<4} {r['upstream']:<7} {r['via']:<7} round {r['round']}: {msg}", flush=True)
        err = r.get("first_error") or r.get("error")
        if err and (r.get("errors") or r.get("status", 200) >= 300):
            print(f"       first error: {err[:300]}", flush=True)

    # A closed-loop load measurement, direct or through the gateway.
    def load(self, scenario: str, up: Upstream, gw: "Gateway | Distributed | NginxProxy | None", rnd: int, extra_args: list[str], duration: float, creds: list[str], label: str | None = None) -> dict:
        addr = gw.addr if gw else up.addr
        wait_quiet(self.args.quiet_wait)
        if gw:
            reset_peak_rss(gw.pid)
        if isinstance(gw, Distributed):
            reset_peak_rss(gw.cp.pid)
            # Redis commands over the whole loadgen run (warm-up included):
            # the timed window can only have fewer.
            cmds_before = redis_commands(gw.redis)
        res = self.runner.run(
            ["load", "--addr", addr, "--bucket", BUCKET, "--duration", str(duration)] + creds + extra_args + watch_args(gw, up),
            timeout=duration + 180,
        )
        extra = {"via": label or ("s3gate" if gw else "direct")}
        if gw:
            cpu = res["cpu_s"].get("s3gate")
            extra["gw_cpu_us_per_req"] = (cpu / res["requests"] * 1e6) if cpu is not None and res["requests"] else None
            extra["gw_peak_rss_kib"] = status_kib(gw.pid, "VmHWM")
        if isinstance(gw, Distributed):
            n = res["requests"]
            for name in ("controlplane", "redis"):
                cpu = res["cpu_s"].get(name)
                short = "cp" if name == "controlplane" else "redis"
                extra[f"{short}_cpu_us_per_req"] = (cpu / n * 1e6) if cpu is not None and n else None
                extra[f"{short}_cpu_s"] = cpu
            extra["redis_cpu_pct"] = 100 * extra["redis_cpu_s"] / res["elapsed_s"] if extra["redis_cpu_s"] is not None and res.get("elapsed_s") else None
            extra["cp_peak_rss_kib"] = status_kib(gw.cp.pid, "VmHWM")
            after = redis_commands(gw.redis)
            # Minus the harness's own INFO (the one before the run).
            extra["redis_calls"] = {k: v - cmds_before.get(k, 0) for k, v in after.items() if v - cmds_before.get(k, 0) and k != "info"}
        up_cpu = upstream_cpu(res)
        extra["upstream_cpu_us_per_req"] = (up_cpu / res["requests"] * 1e6) if up_cpu is not None and res["requests"] else None
        return self.record(scenario, up.name, res["mode"], rnd, res, extra)

    def transfer(self, scenario: str, up: Upstream, gw: "Gateway | NginxProxy | None", rnd: int, args: list[str], creds: list[str], label: str | None = None) -> dict:
        addr = gw.addr if gw else up.addr
        wait_quiet(self.args.quiet_wait)
        if gw:
            reset_peak_rss(gw.pid)
        res = self.runner.run(args[:1] + ["--addr", addr, "--bucket", BUCKET] + creds + args[1:] + watch_args(gw, up), timeout=600)
        extra = {"via": label or ("s3gate" if gw else "direct")}
        if gw:
            cpu = res["cpu_s"].get("s3gate")
            extra["gw_cpu_s_per_gib"] = cpu / (res["bytes"] / GiB) if cpu is not None and res["bytes"] else None
            extra["gw_peak_rss_kib"] = status_kib(gw.pid, "VmHWM")
        up_cpu = upstream_cpu(res)
        extra["upstream_cpu_s_per_gib"] = up_cpu / (res["bytes"] / GiB) if up_cpu is not None and res["bytes"] else None
        return self.record(scenario, up.name, res["mode"], rnd, res, extra)

    def direct_creds(self, up: Upstream) -> list[str]:
        return creds_args((up.access_key, up.secret_key))

    # S1: small GET, hot caches.
    def s1(self, up: Upstream) -> None:
        self.small_gets("S1", up, "32", quiet_row=True)

    # S1c1: S1 at one connection. Nothing queues, so its added p99 is what
    # the gateway adds to one request, not the CPU contention of 32
    # connections on the machine's cores.
    def s1c1(self, up: Upstream) -> None:
        self.small_gets("S1c1", up, "1", quiet_row=False)

    # S1r: S1's 32 connections in an open loop at a fixed offered rate
    # (--s1r-rate) that direct, s3gate and the nginx reverse proxy all keep
    # up with. S1 saturates the two cores, so its p99 is mostly queueing
    # behind the other processes; here added p99 is the latency the gateway
    # adds to a request at a load it carries. A row whose `late` count is
    # not ~0 did not keep the rate.
    def s1r(self, up: Upstream) -> None:
        self.small_gets("S1r", up, "32", quiet_row=False, extra=["--rate", str(self.args.s1r_rate)])

    def small_gets(self, scenario: str, up: Upstream, conns: str, quiet_row: bool, extra: list[str] | None = None) -> None:
        c = self.cfg
        args = ["-c", conns, "--warmup", str(c["warmup"]), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT)] + (extra or [])
        gw = self.gateway(up)
        quiet = self.gateway(up, log_level="warn") if (quiet_row and self.args.s1_quiet and up.name == "nginx") else None
        ref = self.reference_proxy(up)
        try:
            for r in range(c["rounds"]):
                self.load(scenario, up, None, r, args, c["s1_duration"], self.direct_creds(up))
                self.load(scenario, up, gw, r, args, c["s1_duration"], creds_args(self.keys.hot))
                if quiet:
                    self.load(scenario, up, quiet, r, args, c["s1_duration"], creds_args(self.keys.hot), label="s3gate-nolog")
                if ref:
                    self.load(scenario, up, ref, r, args, c["s1_duration"], self.direct_creds(up), label="nginx-proxy")
        finally:
            gw.stop()
            if quiet:
                quiet.stop()
            if ref:
                ref.stop()

    # S1src: warm S1 (every decision cached after the warm-up) with each
    # decision chain of S4src that answers the hot principal bucket-wide:
    # the built-in rules (`s3gate`), rego, opa, plugin; each gateway up for
    # the whole run, measured in the same rounds with the nginx reverse
    # proxy. A chain must cost nothing once its answers are cached.
    def s1src(self, up: Upstream) -> None:
        c = self.cfg
        args = ["-c", "32", "--warmup", str(c["warmup"]), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT)]
        gws = [("s3gate", self.gateway(up))]
        gws += [(f"s3gate-{kind}", self.gateway(up, extra_config=policy_tables(kind, self.work))) for kind in ("rego", "opa", "plugin")]
        ref = self.reference_proxy(up)
        try:
            for r in range(c["rounds"]):
                self.load("S1src", up, None, r, args, c["s1_duration"], self.direct_creds(up))
                for label, gw in gws:
                    self.load("S1src", up, gw, r, args, c["s1_duration"], creds_args(self.keys.hot), label=label)
                if ref:
                    self.load("S1src", up, ref, r, args, c["s1_duration"], self.direct_creds(up), label="nginx-proxy")
        finally:
            for _, gw in gws:
                gw.stop()
            if ref:
                ref.stop()

    # S1obs: what observability costs per request (issue 14). S1 through four
    # gateways in the same rounds: metrics on (the default, with the admin
    # listener up as deployed), metrics off, and traces exported over OTLP to
    # a real gRPC receiver at 1 % and at 100 % sampling; direct and the nginx
    # reverse proxy as yardsticks. Each row also counts the spans received.
    def s1obs(self, up: Upstream) -> None:
        from harness.otlp_receiver import OtlpReceiver

        c = self.cfg
        args = ["-c", "32", "--warmup", str(c["warmup"]), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT)]
        rx = OtlpReceiver(keep=False)
        gws = []
        try:
            gws.append(("s3gate-metrics", self.gateway(up, extra_args=["--admin-listen", "127.0.0.1:0"])))
            gws.append(("s3gate-nometrics", self.gateway(up, extra_args=["--metrics", "false"])))
            for label, ratio in (("s3gate-trace1", "0.01"), ("s3gate-trace100", "1")):
                gws.append((label, self.gateway(up, extra_args=["--otlp-endpoint", rx.endpoint, "--trace-sample-ratio", ratio])))
            ref = self.reference_proxy(up)
            try:
                for r in range(c["rounds"]):
                    self.load("S1obs", up, None, r, args, c["s1_duration"], self.direct_creds(up))
                    for label, gw in gws:
                        before = rx.span_count
                        row = self.load("S1obs", up, gw, r, args, c["s1_duration"], creds_args(self.keys.hot), label=label)
                        # The exporter batches: give the last batch a moment.
                        if "trace" in label:
                            time.sleep(6)
                        row["spans_received"] = rx.span_count - before
                    if ref:
                        self.load("S1obs", up, ref, r, args, c["s1_duration"], self.direct_creds(up), label="nginx-proxy")
            finally:
                if ref:
                    ref.stop()
        finally:
            for _, gw in gws:
                gw.stop()
            rx.close()

    # S1s: S1 through one gateway, with the hot static key and with temporary
    # keys from AssumeRoleWithWebIdentity (the same bucket-wide allow), in
    # the same rounds: what a session costs per request over a static key.
    def s1s(self, up: Upstream) -> None:
        c = self.cfg
        args = ["-c", "32", "--warmup", str(c["warmup"]), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT)]
        gw = self.gateway(up, issuer=self.idp().issuer)
        try:
            session = assume_role(gw, self.web_identity_token())
            creds = self.work / "sts-creds.txt"
            creds.write_text(" ".join(session) + "\n")
            for r in range(c["rounds"]):
                self.load("S1s", up, None, r, args, c["s1_duration"], self.direct_creds(up))
                self.load("S1s", up, gw, r, args, c["s1_duration"], creds_args(self.keys.hot), label="s3gate-key")
                self.load("S1s", up, gw, r, args, c["s1_duration"], ["--creds", str(creds)], label="s3gate-sts")
        finally:
            gw.stop()

    # STS: closed-loop AssumeRoleWithWebIdentity calls with one valid token,
    # 8 connections. Every call verifies the JWT (JWKS cached) and mints and
    # stores a new session: the cold path of a job fleet starting at once.
    def sts(self, up: Upstream) -> None:
        import urllib.parse

        c = self.cfg
        gw = self.gateway(up, issuer=self.idp().issuer)
        try:
            form = self.work / "sts-form.txt"
            form.write_text(urllib.parse.urlencode(dict(Action="AssumeRoleWithWebIdentity", Version="2011-06-15", RoleArn=ROLE_ARN,
                                                        RoleSessionName="bench", WebIdentityToken=self.web_identity_token())))
            assume_role(gw, self.web_identity_token())  # JWKS fetched before the timed window
            args = ["-c", "8", "--warmup", str(c["warmup"]), "--get-key", "unused", "--form", str(form)]
            for r in range(c["rounds"]):
                self.load("STS", up, gw, r, args, c["s4_duration"], [], label="s3gate-sts")
        finally:
            gw.stop()

    def reference_proxy(self, up: Upstream) -> "NginxProxy | None":
        return NginxProxy(self.work, up, self.args.nginx_proxy_workers) if (self.args.reference_proxy and up.name == "nginx") else None

    # S2: one large GET.
    def s2(self, up: Upstream) -> None:
        gw = self.gateway(up)
        ref = self.reference_proxy(up)
        try:
            for r in range(self.cfg["rounds"]):
                self.transfer("S2", up, None, r, ["get", "--key", "large-get"], self.direct_creds(up))
                self.transfer("S2", up, gw, r, ["get", "--key", "large-get"], creds_args(self.keys.hot))
                if ref:
                    self.transfer("S2", up, ref, r, ["get", "--key", "large-get"], self.direct_creds(up), label="nginx-proxy")
        finally:
            gw.stop()
            if ref:
                ref.stop()

    # S3: one large PUT, hex sha256 and aws-chunked.
    def s3(self, up: Upstream) -> None:
        size = str(self.cfg["large_size"])
        for mode in ("sha256", "chunked"):
            gw = self.gateway(up)
            scen = f"S3-{mode}"
            args = ["put", "--key", f"large-put-{mode}", "--size", size, "--mode", mode, "--chunk-size", str(64 << 10)]
            try:
                for r in range(self.cfg["rounds"]):
                    self.transfer(scen, up, None, r, args, self.direct_creds(up))
                    self.transfer(scen, up, gw, r, args, creds_args(self.keys.hot))
            finally:
                gw.stop()

    # S4: cold decisions — a unique object key per request (exact-scoped rule)
    # and 5,000 principals rotating; a fresh gateway per round.
    def s4(self, up: Upstream) -> None:
        c = self.cfg
        args = ["-c", "32", "--warmup", "0", "--unique", "--max-requests", str(c["s4_pool"]), "--get-key", "cold/{i}"]
        for r in range(c["rounds"]):
            self.load("S4", up, None, r, args, c["s4_duration"], self.direct_creds(up))
            gw = self.gateway(up)
            try:
                self.load("S4", up, gw, r, args, c["s4_duration"], ["--creds", str(self.keys.cold_file)])
            finally:
                gw.stop()

    # S4sql: S4 with the decisions from a `[[policy]] kind = "sql"` source
    # alone (the same grants as the built-in rules, as rows without a
    # scope: every request is a decision miss and one query), against the
    # machine's PostgreSQL and a SQLite file; interleaved with the built-in
    # rules (`s3gate`), a fresh gateway per round.
    # S4sql-c1 is the same with one connection: no queueing, so the p99
    # over the built-in rules' is what a SQL decision adds.
    def s4sql(self, up: Upstream) -> None:
        self.cold_sources(up, "S4sql", ("sql",))

    # S4src: S4 (cold decisions) per decision source in one run, each alone
    # in the chain and deciding as the built-in rules do: builtin (`s3gate`),
    # rego (in-process), opa (the OPA stand-in), sql on PostgreSQL and on
    # SQLite, plugin (the SDK plugin); at 32 connections and at one
    # (S4src-c1: no queueing, so its p99 is what one decision costs).
    def s4src(self, up: Upstream) -> None:
        self.cold_sources(up, "S4src", ("rego", "opa", "sql", "plugin"))

    def cold_sources(self, up: Upstream, scenario: str, kinds: tuple[str, ...]) -> None:
        c = self.cfg
        cold = ["--creds", str(self.keys.cold_file)]
        with SqlGrants(self.work, self.args.postgres_url) as dbs:
            sources = [("s3gate", "")]
            for kind in kinds:
                if kind == "sql":
                    sources += [(f"s3gate-sql-{k}", cfg) for k, cfg in dbs.configs()]
                else:
                    sources.append((f"s3gate-{kind}", policy_tables(kind, self.work)))
            for r in range(c["rounds"]):
                for scen, conns in ((scenario, "32"), (f"{scenario}-c1", "1")):
                    args = ["-c", conns, "--warmup", "0", "--unique", "--max-requests", str(c["s4_pool"]), "--get-key", "cold/{i}"]
                    self.load(scen, up, None, r, args, c["s4_duration"], self.direct_creds(up))
                    for label, extra in sources:
                        gw = self.gateway(up, extra_config=extra)
                        try:
                            self.load(scen, up, gw, r, args, c["s4_duration"], cold, label=label)
                        finally:
                            gw.stop()

    # S1g: S1 through `s3gate dataplane` + `controlplane` + Redis, interleaved
    # with direct and `serve` in the same rounds. After the warm-up every
    # decision, key and route is in the data plane's caches.
    def s1g(self, up: Upstream) -> None:
        c = self.cfg
        args = ["-c", "32", "--warmup", str(c["warmup"]), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT)]
        gw = self.gateway(up)
        dist = None
        try:
            dist = self.distributed(up)
            for r in range(c["rounds"]):
                self.load("S1g", up, None, r, args, c["s1_duration"], self.direct_creds(up))
                self.load("S1g", up, gw, r, args, c["s1_duration"], creds_args(self.keys.hot))
                self.load("S1g", up, dist, r, args, c["s1_duration"], creds_args(self.keys.hot), label="s3gate-dist")
        finally:
            gw.stop()
            if dist:
                dist.stop()

    # S4g: S4 (every request a decision-cache miss) through the data plane, so
    # every miss is an Authorize RPC to the control plane; interleaved with
    # direct and `serve`, a fresh gateway (and Redis) per round.
    def s4g(self, up: Upstream) -> None:
        c = self.cfg
        args = ["-c", "32", "--warmup", "0", "--unique", "--max-requests", str(c["s4_pool"]), "--get-key", "cold/{i}"]
        cold = ["--creds", str(self.keys.cold_file)]
        for r in range(c["rounds"]):
            self.load("S4g", up, None, r, args, c["s4_duration"], self.direct_creds(up))
            gw = self.gateway(up)
            try:
                self.load("S4g", up, gw, r, args, c["s4_duration"], cold)
            finally:
                gw.stop()
            dist = self.distributed(up)
            try:
                self.load("S4g", up, dist, r, args, c["s4_duration"], cold, label="s3gate-dist")
            finally:
                dist.stop()

    # S5: 90 % GET / 10 % PUT of 64 KiB, 64 connections.
    def s5(self, up: Upstream) -> None:
        c = self.cfg
        args = [
            "-c", "64", "--warmup", str(c["warmup"]),
            "--get-key", "mix/get/{i}", "--get-count", str(MIX_COUNT),
            "--put-fraction", "0.1", "--put-key", "mix/put/{i}", "--put-count", str(MIX_COUNT), "--put-size", str(64 << 10),
        ]  # fmt: skip
        gw = self.gateway(up)
        try:
            for r in range(c["rounds"]):
                self.load("S5", up, None, r, args, c["s5_duration"], self.direct_creds(up))
                self.load("S5", up, gw, r, args, c["s5_duration"], creds_args(self.keys.hot))
        finally:
            gw.stop()


# --------------------------------------------------------------------------- report


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec: str, unit: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{unit}"


def summarize(results: list[dict]) -> tuple[str, list[dict]]:
    groups: dict[tuple, dict] = {}
    for r in results:
        g = groups.setdefault((r["scenario"], r["upstream"]), {})
        g.setdefault(r["via"], []).append(r)
    lines = []
    rows = []
    load_hdr = "| scenario | upstream | via | rounds | req/s | ratio | p50 µs | p99 µs | added p99 µs | s3gate CPU µs/req | × nginx-proxy CPU | upstream CPU µs/req | s3gate peak RSS MiB | errors | other CPU % |"
    xfer_hdr = "| scenario | upstream | via | rounds | MB/s | ratio | s3gate CPU-s/GiB | upstream CPU-s/GiB | s3gate peak RSS MiB | status | other CPU % |"
    load_lines, xfer_lines = [load_hdr, "|" + "---|" * 15], [xfer_hdr, "|" + "---|" * 11]
    dist_hdr = load_hdr + " control-plane CPU µs/req | Redis CPU µs/req | Redis CPU % of a core | Redis commands per run | dataplane + controlplane + Redis CPU µs/req | control-plane peak RSS MiB |"
    dist_lines = [dist_hdr, "|" + "---|" * 21]
    for (scen, up), by in groups.items():
        direct = by.get("direct", [])
        # The yardstick: one plain user-space proxy hop, same scenario and rounds.
        proxy_cpu = med([r.get("gw_cpu_us_per_req") for r in by.get("nginx-proxy", [])])
        for via, rs in by.items():
            other = med([r.get("other_cpu_pct") for r in rs])
            if "rps" in rs[0]:
                rps = med([r["rps"] for r in rs])
                drps = med([r["rps"] for r in direct])
                p50 = med([(r["latency_us"] or {}).get("p50") for r in rs])
                p99 = med([(r["latency_us"] or {}).get("p99") for r in rs])
                dp99 = med([(r["latency_us"] or {}).get("p99") for r in direct])
                cpu = med([r.get("gw_cpu_us_per_req") for r in rs])
                ucpu = med([r.get("upstream_cpu_us_per_req") for r in rs])
                rss = max([r.get("gw_peak_rss_kib") or 0 for r in rs]) / 1024 or None
                errors = sum(r["errors"] for r in rs)
                row = dict(scenario=scen, upstream=up, via=via, rounds=len(rs), rps=rps, ratio=(rps / drps if via != "direct" and drps else None),
                           p50_us=p50, p99_us=p99, added_p99_us=(p99 - dp99 if via != "direct" and dp99 is not None and p99 is not None else None),
                           gw_cpu_us_per_req=cpu, upstream_cpu_us_per_req=ucpu, gw_peak_rss_mib=rss, errors=errors, other_cpu_pct=other,
                           cpu_vs_nginx_proxy=(cpu / proxy_cpu if cpu is not None and proxy_cpu and via not in ("direct", "nginx-proxy") else None),
                           spans_received=med([r.get("spans_received") for r in rs]))  # fmt: skip
                rows.append(row)
                line = (
                    f"| {scen} | {up} | {via} | {len(rs)} | {fmt(rps, ',.0f')} | {fmt(row['ratio'], '.2f')}× | {fmt(p50, ',.0f')} | {fmt(p99, ',.0f')} | "
                    f"{fmt(row['added_p99_us'], '+,.0f')} | {fmt(cpu, '.1f')} | {fmt(row['cpu_vs_nginx_proxy'], '.2f', '×')} | {fmt(ucpu, '.1f')} | {fmt(rss, '.1f')} | {errors} | {fmt(other, '.0f')} |"
                )
                if scen not in DIST_SCENARIOS:
                    load_lines.append(line)
                    continue
                dist = via == "s3gate-dist"
                row.update(
                    cp_cpu_us_per_req=med([r.get("cp_cpu_us_per_req") for r in rs]) if dist else None,
                    redis_cpu_us_per_req=med([r.get("redis_cpu_us_per_req") for r in rs]) if dist else None,
                    redis_cpu_pct=med([r.get("redis_cpu_pct") for r in rs]) if dist else None,
                    redis_commands=med([sum((r.get("redis_calls") or {}).values()) for r in rs]) if dist else None,
                    redis_command_names=sorted({k for r in rs for k in (r.get("redis_calls") or {})}) if dist else None,
                    cp_peak_rss_mib=(max([r.get("cp_peak_rss_kib") or 0 for r in rs]) / 1024 or None) if dist else None,
                )
                total = (cpu or 0) + (row["cp_cpu_us_per_req"] or 0) + (row["redis_cpu_us_per_req"] or 0) if cpu is not None else None
                row["all_gw_cpu_us_per_req"] = total
                cmds = "–" if row["redis_commands"] is None else f"{row['redis_commands']:,.0f} ({' '.join(row['redis_command_names']) or 'none'})"
                dist_lines.append(
                    line + f" {fmt(row['cp_cpu_us_per_req'], '.1f')} | {fmt(row['redis_cpu_us_per_req'], '.2f')} | {fmt(row['redis_cpu_pct'], '.2f')} | "
                    f"{cmds} | {fmt(total, '.1f')} | {fmt(row['cp_peak_rss_mib'], '.1f')} |"
                )
            else:
                mbs = med([r["mb_s"] for r in rs])
                dmbs = med([r["mb_s"] for r in direct])
                cpu = med([r.get("gw_cpu_s_per_gib") for r in rs])
                ucpu = med([r.get("upstream_cpu_s_per_gib") for r in rs])
                rss = max([r.get("gw_peak_rss_kib") or 0 for r in rs]) / 1024 or None
                statuses = sorted({r["status"] for r in rs})
                row = dict(scenario=scen, upstream=up, via=via, rounds=len(rs), mb_s=mbs, ratio=(mbs / dmbs if via != "direct" and dmbs else None),
                           gw_cpu_s_per_gib=cpu, upstream_cpu_s_per_gib=ucpu, gw_peak_rss_mib=rss, statuses=statuses, other_cpu_pct=other)  # fmt: skip
                rows.append(row)
                xfer_lines.append(
                    f"| {scen} | {up} | {via} | {len(rs)} | {fmt(mbs, ',.0f')} | {fmt(row['ratio'], '.2f')}× | {fmt(cpu, '.2f')} | {fmt(ucpu, '.2f')} | "
                    f"{fmt(rss, '.1f')} | {','.join(map(str, statuses))} | {fmt(other, '.0f')} |"
                )
    if len(load_lines) > 2:
        lines += ["Request-rate scenarios (medians over rounds; peak RSS is the maximum):", ""] + load_lines + [""]
    if len(dist_lines) > 2:
        lines += [
            "Distributed mode (via s3gate-dist = `s3gate dataplane` → gRPC → `s3gate controlplane` → Redis; \"s3gate\" columns are the data plane's; "
            "s3gate = `serve` in the same rounds; Redis commands: median over rounds of the whole loadgen run, warm-up included):",
            "",
        ] + dist_lines + [""]
    if len(xfer_lines) > 2:
        lines += ["Transfer scenarios (medians over rounds; MB = 10^6 bytes; peak RSS is the maximum):", ""] + xfer_lines + [""]
    return "\n".join(lines), rows


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = status = None
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    del status
    return {"nproc": os.cpu_count(), "cpu": model, "mem_mib": mem, "kernel": platform.release()}


# --------------------------------------------------------------------------- profile


def profile_s1(args, cfg: dict, work: Path, root: Path, runner: Runner) -> int:
    """perf record of s3gate (nginx upstream) while the S1 load runs."""
    perf = shutil.which("perf")
    if not perf:
        print("perf is not on PATH (Debian: apt-get install linux-perf); see BENCHMARKS.md for the callgrind recipe", file=sys.stderr)
        return 2
    up = Nginx(work, root, args.nginx_workers)
    bench = Bench(args, cfg, work, args.gateway_bin, runner)
    rx, extra_args = trace_receiver(args)
    gw = bench.gateway(up, log_level=args.profile_log, extra_args=extra_args)
    secs = args.profile_seconds
    data = args.out / "perf-s1.data"
    try:
        load = subprocess.Popen(
            [str(args.loadgen_bin), "load", "--addr", gw.addr, "--bucket", BUCKET, "-c", "32", "--warmup", "1",
             "--duration", str(secs + 2), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT),
             "--watch", f"s3gate={gw.pid}"] + creds_args(bench.keys.hot),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.5)
        subprocess.run(
            [perf, "record", "-F", str(args.profile_freq), "-e", "cpu-clock", "--call-graph", "dwarf,16384",
             "-p", str(gw.pid), "-o", str(data), "--", "sleep", str(secs)],
            check=True, timeout=secs + 120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out, err = load.communicate(timeout=secs + 120)
        print("load during the profile (perturbed by perf):", out.strip() or err.strip())
    finally:
        gw.stop()
        up.proc.stop()
        if rx is not None:
            rx.close()
    reports = {
        "self": ["--no-children", "--sort", "symbol", "-g", "none", "--percent-limit", "0.3"],
        "children": ["--children", "--sort", "symbol", "-g", "none", "--percent-limit", "1"],
    }
    for name, extra in reports.items():
        path = args.out / f"perf-s1-{name}.txt"
        with open(path, "w") as f:
            subprocess.run([perf, "report", "-i", str(data), "--stdio"] + extra, stdout=f, stderr=subprocess.DEVNULL, timeout=900)
        print(f"{name:<8} -> {path}")
    print(f"raw data -> {data}  (perf report -i {data})")
    return 0


def trace_receiver(args) -> tuple:
    """With --profile-trace-ratio: a real OTLP receiver and the gateway
    arguments that export traces to it at that ratio; else nothing."""
    if args.profile_trace_ratio is None:
        return None, []
    from harness.otlp_receiver import OtlpReceiver

    rx = OtlpReceiver(keep=False)
    return rx, ["--otlp-endpoint", rx.endpoint, "--trace-sample-ratio", str(args.profile_trace_ratio)]


def callgrind_s1(args, cfg: dict, work: Path, root: Path, runner: Runner) -> int:
    """s3gate's user-space instructions per S1 request, counted by callgrind:
    the same for the same binary and requests whatever else the machine
    does, so changes far below S1's run-to-run noise show. The kernel's
    share (socket I/O, about 40 % of s3gate's CPU) is not counted."""
    valgrind, ctl = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not (valgrind and ctl):
        print("valgrind is not on PATH (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    up = Nginx(work, root, args.nginx_workers)
    bench = Bench(args, cfg, work, args.gateway_bin, runner)
    out = args.out / "callgrind-s1.out"
    for old in args.out.glob("callgrind-s1.out*"):
        old.unlink()
    wrapper = [valgrind, "--tool=callgrind", "--instr-atstart=no", "--separate-threads=no", f"--callgrind-out-file={out}"] + [
        f"--toggle-collect={fn}" for fn in args.callgrind_toggle
    ]
    rx, extra_args = trace_receiver(args)
    gw = bench.gateway(up, log_level=args.profile_log, wrapper=wrapper, start_timeout=300, extra_args=extra_args)
    n = args.callgrind

    def load(requests: int) -> dict:
        return runner.run(["load", "--addr", gw.addr, "--bucket", BUCKET, "-c", str(args.callgrind_connections), "--warmup", "0",
                           "--duration", "3600", "--max-requests", str(requests), "--get-key", "small/{i}", "--get-count", str(SMALL_COUNT)]
                          + creds_args(bench.keys.hot), timeout=3600)  # fmt: skip

    try:
        load(max(n // 5, 500))  # caches, pools and the allocator warm
        subprocess.run([ctl, "-i", "on", str(gw.pid)], check=True, capture_output=True, timeout=120)
        res = load(n)
        subprocess.run([ctl, "-d", str(gw.pid)], check=True, capture_output=True, timeout=600)
    finally:
        gw.stop()
        up.proc.stop()
        if rx is not None:
            rx.close()
    dumps = sorted((p for p in args.out.glob("callgrind-s1.out*") if p.stat().st_size > 0), key=lambda p: p.stat().st_mtime)
    total = None
    for dump in dumps:
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
        if total:
            break
    requests = res.get("requests") or n
    if not total:
        print("no callgrind totals found", file=sys.stderr)
        return 1
    print(f"S1 under callgrind, {args.callgrind_connections} connections: {requests} requests, {total:,} instructions, "
          f"{total / requests:,.0f} instructions per request")  # fmt: skip
    print(f"dump -> {dumps[0]}  (callgrind_annotate --inclusive=yes {dumps[0]})")
    return 0


# --------------------------------------------------------------------------- main


def default_gateway_bin() -> Path:
    """$S3GATE_BIN; else the `dist` build (what ships, what bench/run.sh
    builds); else the `release` build the tests use."""
    if os.environ.get("S3GATE_BIN"):
        return Path(os.environ["S3GATE_BIN"])
    dist = REPO / "target/dist/s3gate"
    return dist if dist.exists() else REPO / "target/release/s3gate"


def main() -> int:
    global POLICY_TABLES
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per scenario, 1 round, 128 MiB transfers")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5", help="comma-separated subset of S1..S5, plus S1g/S4g (S1/S4 through controlplane + dataplane + Redis), S4sql (S4 with a [[policy]] kind=sql: PostgreSQL, SQLite), "
                    "S4src (S4 per decision source in one run: builtin, rego, opa, sql on PostgreSQL and SQLite, plugin; at 32 connections and at 1), "
                    "S1src (warm S1 per decision chain: builtin, rego, opa, plugin), "
                    "S1s (S1 with STS session keys against a static key), STS (cold AssumeRoleWithWebIdentity calls), "
                    "S1obs (S1 with metrics on/off and traces at 1 %% and 100 %% sampling) and "
                    "S1c1 (S1 at one connection: the latency added without queueing) and "
                    "S1r (S1 in an open loop at --s1r-rate req/s: the latency added at a load every variant carries); the last nine are not in the default set")
    ap.add_argument("--s1r-rate", type=float, default=5000.0, help="offered load of S1r in requests per second (default 5000)")
    ap.add_argument("--postgres-url", default=os.environ.get("S3GATE_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                    help="a PostgreSQL server where S4sql/S4src may create (and then drops) a database of its own")
    ap.add_argument("--redis-bin", default=shutil.which("redis-server") or "/usr/bin/redis-server", help="redis-server for S1g/S4g (a private one on a free 127.0.0.1 port, no persistence)")
    ap.add_argument("--upstreams", default="nginx,s3s-fs", help="comma-separated subset of nginx,s3s-fs")
    ap.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    ap.add_argument("--nginx-proxy-workers", type=int, default=1,
                    help="worker processes of the nginx reference proxy (default 1; s3gate's own count is S3GATE_WORKER_THREADS, one per core unless set)")
    ap.add_argument("--no-s1-quiet", dest="s1_quiet", action="store_false", help="skip the S1 run with the access log off")
    ap.add_argument("--no-reference-proxy", dest="reference_proxy", action="store_false",
                    help="skip the nginx reverse-proxy reference rows (S1, S2 on the nginx upstream)")
    ap.add_argument("--quiet-wait", type=float, default=120, help="seconds to wait for an idle machine before each measurement")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for s3gate (serve, and in S1g/S4g also controlplane and dataplane), e.g. S3GATE_WORKER_THREADS=1 (repeatable)")
    ap.add_argument("--gateway-bin", type=Path, default=default_gateway_bin(),
                    help="the s3gate binary (default: $S3GATE_BIN, else target/dist/s3gate as it ships, else target/release/s3gate)")
    ap.add_argument("--loadgen-bin", type=Path, default=REPO / "target/release/s3gate-loadgen")
    ap.add_argument("--work", type=Path, help="work directory (default: a new one under /tmp, removed afterwards)")
    ap.add_argument("--profile", action="store_true", help="perf-record s3gate under the S1 load (nginx upstream) instead of benchmarking")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--callgrind", type=int, metavar="N", help="count s3gate's instructions over N S1 requests under callgrind (valgrind) instead of benchmarking")
    ap.add_argument("--callgrind-connections", type=int, default=4, help="connections of the --callgrind load")
    ap.add_argument("--callgrind-toggle", action="append", default=[], metavar="FN",
                    help="valgrind --toggle-collect=FN (repeatable): count only inside FN, then switch off again inside a nested one; "
                    "'*task::raw::poll*' with '*compress256*' counts every task poll without SHA-256, which valgrind's CPU runs in "
                    "software at several times its cost on a host with SHA extensions")  # fmt: skip
    ap.add_argument("--profile-freq", type=int, default=999, help="perf sampling frequency (Hz)")
    ap.add_argument("--profile-log", default="info", help="S3GATE_LOG for the profiled gateway")
    ap.add_argument("--profile-trace-ratio", type=float, default=None,
                    help="--profile or --callgrind with traces exported to a real OTLP receiver at this sampling ratio (as S1obs's trace rows)")
    ap.add_argument("--policy", default="none", help="the decision chain of every gateway: none (no [[policy]]), builtin, rego "
                    "(bench/policy/bench.rego in-process), opa (the same file behind tests/harness/opa_server.py, OPA's "
                    "REST API over a Python Rego engine) or plugin (bench/policy/bench_plugin.py, the same decisions as an "
                    "SDK plugin); S4 then measures cold decisions of that source")
    ap.add_argument("--out", type=Path, default=REPO / "target/bench", help="where results JSON/Markdown go")
    args = ap.parse_args()

    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg["rounds"] = args.rounds
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    scenarios = [s[:-1] + "g" if s.endswith("G") else s for s in scenarios]  # S4G -> S4g
    scenarios = ["S1s" if s == "S1S" else s for s in scenarios]
    scenarios = [{"S4SQL": "S4sql", "S4SRC": "S4src", "S1SRC": "S1src", "S1OBS": "S1obs", "S1C1": "S1c1", "S1R": "S1r"}.get(s, s) for s in scenarios]
    upstreams = [u.strip() for u in args.upstreams.split(",") if u.strip()]
    for exe in (args.gateway_bin, args.loadgen_bin):
        if not exe.exists():
            print(f"missing {exe}: run bench/run.sh (it builds it)", file=sys.stderr)
            return 2

    if any(s in DIST_SCENARIOS for s in scenarios) and not (shutil.which(args.redis_bin) or Path(args.redis_bin).exists()):
        print(f"S1g/S4g need redis-server ({args.redis_bin} not found; Debian: apt-get install redis-server, or --redis-bin)", file=sys.stderr)
        return 2

    own_work = args.work is None
    work = args.work or Path(subprocess.check_output(["mktemp", "-d", "/tmp/s3gate-bench.XXXXXX"], text=True).strip())
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    runner = Runner(args.loadgen_bin, args.out / f"bench-{stamp}.loadgen.log")
    mach = machine()
    print(f"machine: {mach['nproc']} cores, {mach['cpu']}, {mach['mem_mib']} MiB, kernel {mach['kernel']}")
    print(f"work dir: {work}; settings: {cfg}")

    root = work / "root"
    t0 = time.monotonic()
    if args.profile or args.callgrind:
        cfg = dict(QUICK, large_size=MiB, s4_pool=0)
    seed_data(root, cfg)
    print(f"seeded data in {time.monotonic() - t0:.1f}s")

    if args.profile or args.callgrind:
        try:
            return (callgrind_s1 if args.callgrind else profile_s1)(args, cfg, work, root, runner)
        finally:
            if own_work:
                shutil.rmtree(work, ignore_errors=True)

    POLICY_TABLES = policy_tables(args.policy, work)
    print(f"policy: {args.policy}")
    bench = Bench(args, cfg, work, args.gateway_bin, runner)
    ups: dict[str, Upstream] = {}
    rc = 0
    try:
        if "nginx" in upstreams:
            ups["nginx"] = Nginx(work, root, args.nginx_workers)
        if "s3s-fs" in upstreams:
            ups["s3s-fs"] = S3sFs(work, root)
        for scen in scenarios:
            for name, up in ups.items():
                print(f"{scen} on {name}", flush=True)
                try:
                    getattr(bench, scen.lower())(up)
                except RuntimeError as e:
                    rc = 1
                    print(f"  {scen} on {name} FAILED: {e}", file=sys.stderr, flush=True)
    finally:
        for up in ups.values():
            up.proc.stop()
        if bench._idp is not None:
            bench._idp.stop()
        table, rows = summarize(bench.results)
        doc = {"machine": mach, "settings": cfg, "gateway_bin": str(args.gateway_bin), "gateway_env": args.gateway_env, "started": stamp, "summary": rows, "runs": bench.results}
        (args.out / f"bench-{stamp}.json").write_text(json.dumps(doc, indent=1))
        (args.out / f"bench-{stamp}.md").write_text(table + "\n")
        print()
        print(table)
        print(f"results: {args.out / f'bench-{stamp}.json'} and .md; loadgen log: {runner.log}")
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}")
    if any(r.get("errors") for r in bench.results) or any(r.get("status", 200) >= 300 for r in bench.results):
        print("some runs had errors: see the loadgen log", file=sys.stderr)
        rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
