"""Helpers of deploy/rehearse.sh, which runs the topology of
deploy/docker-compose.yml on 127.0.0.1 with real processes.

The commands and configuration files come from the compose stack itself,
with container addresses rewritten to loopback ones, so what is rehearsed is
what `docker compose up` runs:

  argv SERVICE FROM=TO...      the service's command from docker-compose.yml
  haproxy OUT ...              compose/haproxy.cfg for loopback
  prometheus OUT ...           compose/prometheus.yml for loopback
  seed OUT FROM=TO...          compose/s3gate.toml with addresses replaced
  drive ...                    boto3 load through haproxy, then read back
  check-prometheus ...         Prometheus holds the series of every process
  haproxy-state ...            wait until haproxy reports a server UP/DOWN

Needs python3 with boto3 and PyYAML (tests/e2e/requirements.txt).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_DIR = DEPLOY / "compose"


def fail(msg: str) -> None:
    print(f"rehearse: {msg}", file=sys.stderr)
    sys.exit(1)


def mapping(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            fail(f"expected FROM=TO, got {p!r}")
        out[k] = v
    return out


def substitute(text: str, subst: dict[str, str], what: str) -> str:
    """Replaces every FROM of `subst` in `text`; each must occur."""
    for k, v in subst.items():
        if k not in text:
            fail(f"{what}: {k!r} does not occur")
        text = text.replace(k, v)
    return text


# --------------------------------------------------------------------------- configs


def cmd_argv(a) -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    if a.service not in services:
        fail(f"no service {a.service} in {COMPOSE}")
    argv = [str(x) for x in services[a.service]["command"]]
    for flag in a.drop:
        # a flag and its value
        if flag not in argv:
            fail(f"{a.service}: no {flag} to drop")
        i = argv.index(flag)
        del argv[i : i + 2]
    subst = mapping(a.map)
    joined = "\n".join(argv)
    argv = substitute(joined, subst, f"command of {a.service}").split("\n")
    print("\n".join(argv))


def cmd_haproxy(a) -> None:
    """compose/haproxy.cfg with the binds and servers on 127.0.0.1. The checks
    (option httpchk GET /readyz, expect 200, inter/fall/rise) stay as they are;
    Docker's DNS resolvers go, and each server's check port becomes its data
    plane's admin port."""
    text = (COMPOSE_DIR / "haproxy.cfg").read_text()
    servers = {}
    for spec in a.server:  # dp1=127.0.0.1:PORT,ADMINPORT
        name, _, rest = spec.partition("=")
        addr, _, admin = rest.partition(",")
        servers[name] = (addr, admin)
    binds = mapping(a.bind)  # ":9080=127.0.0.1:PORT"
    out, in_resolvers, seen = [], False, set()
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["resolvers"]:
            in_resolvers = True
            continue
        if in_resolvers:
            if line.strip() == "" or line.startswith((" ", "\t")):
                continue
            in_resolvers = False
        if words[:1] == ["default-server"]:
            line = re.sub(r"\s+resolvers\s+\S+", "", line)
            line = re.sub(r"\s+init-addr\s+\S+", "", line)
        elif words[:1] == ["bind"]:
            if words[1] not in binds:
                fail(f"haproxy.cfg: no loopback address for bind {words[1]}")
            line = line.replace(words[1], binds[words[1]])
            seen.add(words[1])
        elif words[:1] == ["server"]:
            name = words[1]
            if name not in servers:
                fail(f"haproxy.cfg: no loopback address for server {name}")
            addr, admin = servers[name]
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}server {name} {addr} port {admin}"
            seen.add(name)
        out.append(line)
    missing = (set(servers) | set(binds)) - seen
    if missing:
        fail(f"haproxy.cfg has no {sorted(missing)}")
    Path(a.out).write_text("\n".join(out) + "\n")


def cmd_prometheus(a) -> None:
    """compose/prometheus.yml with its targets on 127.0.0.1, a faster scrape
    interval, and the jobs whose targets do not run here left out."""
    cfg = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = mapping(a.target)
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] in a.skip_job:
            continue
        for sc in job["static_configs"]:
            for t in sc["targets"]:
                if t not in targets:
                    fail(f"prometheus.yml: no loopback address for target {t} (job {job['job_name']})")
            sc["targets"] = [targets[t] for t in sc["targets"]]
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    cfg["global"]["scrape_interval"] = a.interval
    Path(a.out).write_text(yaml.safe_dump(cfg, sort_keys=False))


def cmd_seed(a) -> None:
    text = (COMPOSE_DIR / "s3gate.toml").read_text()
    Path(a.out).write_text(substitute(text, mapping(a.map), "compose/s3gate.toml"))


# --------------------------------------------------------------------------- haproxy state


def haproxy_states(stats_url: str) -> dict[str, str]:
    """Server name -> status (UP, DOWN, ...) of backend `dataplanes`."""
    with urllib.request.urlopen(stats_url + ";csv", timeout=2) as r:
        text = r.read().decode()
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "dataplanes" and row["svname"] not in ("FRONTEND", "BACKEND")}


def cmd_haproxy_state(a) -> None:
    deadline = time.monotonic() + a.timeout
    states = {}
    while time.monotonic() < deadline:
        try:
            states = haproxy_states(a.stats)
            # exactly UP or DOWN: "UP 1/2" is a server on its way down
            if states.get(a.server) == a.state:
                print(f"rehearse: haproxy reports {a.server} {states[a.server]}")
                return
        except OSError:
            pass
        time.sleep(0.1)
    fail(f"haproxy did not report {a.server} {a.state} within {a.timeout}s (last: {states})")


# --------------------------------------------------------------------------- load


class Load:
    """Clients PUT new objects and GET earlier ones through the load balancer
    until told to stop; every call goes through boto3's standard retries,
    so a failure here is one that the SDK's retries did not absorb."""

    def __init__(self, a):
        import boto3
        from botocore.config import Config

        self.a = a
        cfg = Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": a.attempts},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=a.threads,
        )
        self.s3 = boto3.session.Session().client(
            "s3", endpoint_url=a.endpoint, region_name="us-east-1",
            aws_access_key_id=a.access_key, aws_secret_access_key=os.environ[a.secret_env], config=cfg,
        )  # fmt: skip
        self.lock = threading.Lock()
        self.written: dict[str, str] = {}  # key -> sha256 of what was PUT
        self.failures: list[str] = []
        self.slow: list[str] = []  # calls that took over 2 s (retries included)
        self.cut: list[str] = []  # response bodies cut off mid-stream, read again
        self.counts = {"put": 0, "get": 0, "retries": 0}
        self.stop = threading.Event()

    def note(self, op: str, meta: dict) -> None:
        with self.lock:
            self.counts[op] += 1
            self.counts["retries"] += meta.get("RetryAttempts", 0)

    def get(self, key: str):
        """GetObject and its body. A body cut off once the response has
        begun (its data plane was killed mid-stream) is past what the SDK's
        retries cover; like boto3's download_file (s3transfer), it is
        requested again, once, and counted."""
        from botocore.exceptions import ResponseStreamingError

        r = self.s3.get_object(Bucket=self.a.bucket, Key=key)
        try:
            return r, r["Body"].read()
        except ResponseStreamingError as e:
            with self.lock:
                self.cut.append(f"{time.strftime('%H:%M:%S')} GET {key}: {e}")
            r = self.s3.get_object(Bucket=self.a.bucket, Key=key)
            return r, r["Body"].read()

    def worker(self, n: int) -> None:
        rng = random.Random(n)
        i = 0
        while not self.stop.wait(self.a.pause):
            i += 1
            t0 = time.monotonic()
            what = ""
            try:
                with self.lock:
                    keys = list(self.written)
                if keys and rng.random() < 0.5:
                    key = rng.choice(keys)
                    what = f"GET {key}"
                    r, body = self.get(key)
                    if hashlib.sha256(body).hexdigest() != self.written[key]:
                        raise AssertionError(f"GET {key}: body differs from what was PUT")
                    self.note("get", r["ResponseMetadata"])
                else:
                    key = f"rehearsal/{n}/{i:06d}"
                    # No empty bodies: boto3's next PUT on the same connection after
                    # an empty one waits out read_timeout (with s3s-fs alone too).
                    body = rng.randbytes(rng.choice([1, 700, 4096, 65536, 262144]))
                    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
                    what = f"PUT {key} ({len(body)} bytes)"
                    r = self.s3.put_object(Bucket=self.a.bucket, Key=key, Body=body, ContentMD5=md5)
                    with self.lock:
                        self.written[key] = hashlib.sha256(body).hexdigest()
                    self.note("put", r["ResponseMetadata"])
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with self.lock:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {what}: {type(e).__name__}: {e}")
            took = time.monotonic() - t0
            if took > 2:
                with self.lock:
                    self.slow.append(f"{time.strftime('%H:%M:%S')} {what}: {took:.1f}s")

    def run(self) -> None:
        threads = [threading.Thread(target=self.worker, args=(n,), daemon=True) for n in range(self.a.threads)]
        for t in threads:
            t.start()
        stop_file = Path(self.a.stop_file)
        deadline = time.monotonic() + self.a.max_seconds
        while not stop_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        for t in threads:
            t.join(60)

    def read_back(self) -> list[str]:
        """Every object PUT reads back identical through the gateway, and is
        the same file on the backend's disk."""
        from concurrent.futures import ThreadPoolExecutor

        root = Path(self.a.backend_root) / self.a.backend_bucket

        def check(item: tuple[str, str]) -> list[str]:
            key, digest = item
            out = []
            try:
                body = self.s3.get_object(Bucket=self.a.bucket, Key=key)["Body"].read()
                if hashlib.sha256(body).hexdigest() != digest:
                    out.append(f"{key}: read back differs from what was PUT")
            except Exception as e:  # noqa: BLE001
                out.append(f"{key}: read back failed: {type(e).__name__}: {e}")
            on_disk = root / key
            if not on_disk.is_file() or hashlib.sha256(on_disk.read_bytes()).hexdigest() != digest:
                out.append(f"{key}: the backend's file is missing or differs")
            return out

        with ThreadPoolExecutor(self.a.threads) as pool:
            return [m for ms in pool.map(check, sorted(self.written.items())) for m in ms]


def cmd_drive(a) -> None:
    load = Load(a)
    t0 = time.monotonic()
    load.run()
    took = time.monotonic() - t0
    t1 = time.monotonic()
    lost = load.read_back()
    c = load.counts
    print(f"rehearse: load {took:.1f}s: {c['put']} PUTs, {c['get']} GETs, {c['retries']} SDK retries, "
          f"{len(load.cut)} bodies cut mid-stream and read again, {len(load.failures)} failed; {len(load.written)} objects read back in {time.monotonic() - t1:.1f}s, "
          f"{len(lost)} lost")  # fmt: skip
    Path(a.report).write_text(json.dumps({**c, "failures": load.failures, "slow": load.slow, "cut": load.cut, "lost": lost, "objects": len(load.written), "seconds": took}))
    for f in load.cut[:20]:
        print(f"rehearse: cut: {f}")
    for f in load.slow[:20]:
        print(f"rehearse: slow: {f}")
    for f in load.failures[:20]:
        print(f"rehearse: FAILED {f}", file=sys.stderr)
    for f in lost[:20]:
        print(f"rehearse: LOST {f}", file=sys.stderr)
    if load.failures or lost:
        sys.exit(1)
    if c["put"] < a.min_puts or c["get"] < a.min_gets:
        fail(f"too little load to mean anything: {c}")


# --------------------------------------------------------------------------- prometheus


def prom_query(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    if doc.get("status") != "success":
        raise RuntimeError(f"{query}: {doc}")
    return doc["data"]["result"]


def cmd_check_prometheus(a) -> None:
    """Polls Prometheus's HTTP API until `s3gate_requests_total` has series from
    every data plane and `s3gate_build_info` from every process."""
    names = mapping(a.instance)  # instance (host:port) -> process name
    dataplanes = set(a.dataplane)
    deadline = time.monotonic() + a.timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            requests = prom_query(a.url, "s3gate_requests_total")
            build = prom_query(a.url, "s3gate_build_info")
        except OSError as e:
            last = str(e)
            time.sleep(0.5)
            continue
        with_requests = {names.get(s["metric"].get("instance"), s["metric"].get("instance")) for s in requests}
        with_requests_counted = {
            names.get(s["metric"].get("instance")) for s in requests if float(s["value"][1]) > 0
        }
        with_build = {names.get(s["metric"].get("instance"), s["metric"].get("instance")) for s in build}
        last = f"requests_total from {sorted(with_requests)}, build_info from {sorted(with_build)}"
        if dataplanes <= with_requests_counted and set(names.values()) <= with_build:
            jobs = {s["metric"].get("job") for s in build}
            print(f"rehearse: Prometheus: {len(requests)} s3gate_requests_total series from {sorted(with_requests)}; "
                  f"s3gate_build_info from {sorted(with_build)} (jobs {sorted(jobs)})")  # fmt: skip
            return
        time.sleep(0.5)
    fail(f"Prometheus does not hold the series within {a.timeout}s: {last}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("argv")
    s.add_argument("service")
    s.add_argument("map", nargs="*")
    s.add_argument("--drop", action="append", default=[], help="a flag to leave out, with its value")
    s.set_defaults(fn=cmd_argv)

    s = sub.add_parser("haproxy")
    s.add_argument("out")
    s.add_argument("--server", action="append", default=[], help="NAME=ADDR,ADMINPORT")
    s.add_argument("--bind", action="append", default=[], help="FROM=TO")
    s.set_defaults(fn=cmd_haproxy)

    s = sub.add_parser("prometheus")
    s.add_argument("out")
    s.add_argument("--target", action="append", default=[], help="FROM=TO")
    s.add_argument("--skip-job", action="append", default=[])
    s.add_argument("--interval", default="1s")
    s.set_defaults(fn=cmd_prometheus)

    s = sub.add_parser("seed")
    s.add_argument("out")
    s.add_argument("map", nargs="*")
    s.set_defaults(fn=cmd_seed)

    s = sub.add_parser("haproxy-state")
    s.add_argument("--stats", required=True, help="the stats URL, e.g. http://127.0.0.1:8404/stats")
    s.add_argument("--server", required=True)
    s.add_argument("--state", required=True, choices=["UP", "DOWN"])
    s.add_argument("--timeout", type=float, default=15)
    s.set_defaults(fn=cmd_haproxy_state)

    s = sub.add_parser("drive")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--access-key", required=True)
    s.add_argument("--secret-env", required=True, help="the environment variable holding the secret key")
    s.add_argument("--bucket", default="demo")
    s.add_argument("--backend-root", required=True)
    s.add_argument("--backend-bucket", default="demo")
    s.add_argument("--threads", type=int, default=4)
    s.add_argument("--attempts", type=int, default=3, help="boto3 total_max_attempts (standard mode's default is 3)")
    s.add_argument("--stop-file", required=True, help="the load stops when this file appears")
    s.add_argument("--max-seconds", type=float, default=60)
    s.add_argument("--pause", type=float, default=0.02, help="seconds between one client's calls")
    s.add_argument("--min-puts", type=int, default=50)
    s.add_argument("--min-gets", type=int, default=50)
    s.add_argument("--report", required=True)
    s.set_defaults(fn=cmd_drive)

    s = sub.add_parser("check-prometheus")
    s.add_argument("--url", required=True)
    s.add_argument("--instance", action="append", default=[], help="HOST:PORT=NAME for every process")
    s.add_argument("--dataplane", action="append", default=[], help="names whose request counters must be there")
    s.add_argument("--timeout", type=float, default=20)
    s.set_defaults(fn=cmd_check_prometheus)

    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
