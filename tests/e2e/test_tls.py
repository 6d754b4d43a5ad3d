"""HTTPS, HTTP/2 and client certificates (mTLS), through real clients.

Each gateway here serves plain HTTP and HTTPS side by side (`[tls]` in its
config, certificates made per run by tlsutil, named by paths relative to
the config file). Clients: boto3 and the aws cli (trusting the test CA),
curl (HTTP/2, --aws-sigv4, client certificates), Python's ssl and the h2
library for what curl cannot do (a stream that stops reading, a body that
stops half-way)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import (
    REGION,
    gateway_bin,
    gateway_env,
    make_keys,
    node_files,
    read_ready_file,
    render_config,
    rules_config,
    stop_gateway,
    unused_port,
)
from harness.cluster import start_controlplane, start_dataplane
from harness.procs import start_with_ready_file
from recorder import access_log_line, launch_gateway
from s3util import pattern_stream, sign, target_for
from tlsutil import Ca, serial_of, uri

MiB = 1 << 20
GiB = 1 << 30
EX_USAGE = 64
EMPTY_SHA = hashlib.sha256(b"").hexdigest()

# Principals the certificates name, and what the rules let them do.
READER = "tls-reader"  # CN; a rule of its own: read data
ANALYST = "olga"  # CN; no rule of her own, OU=analysts (a group rule: read data)
NOBODY = "mallory"  # CN; no rule at all
SPIFFE_READER = "spiffe://clients.test/reader"  # a URI SAN (principal_from = "san_uri")
TLS_RULES = [
    ("allow", [READER], ["s3:GetObject", "s3:ListBucket"], ["data", "data/*"]),
    ("allow", [SPIFFE_READER], ["s3:GetObject", "s3:ListBucket"], ["data", "data/*"]),
]


def tls_section(client_auth: str = "optional", principal_from: str = "cn") -> str:
    # Relative paths: resolved against the config file's directory.
    return (
        "\n[tls]\n"
        'listen = "127.0.0.1:0"\n'
        'cert = "tls/server.pem"\n'
        'key = "tls/server-key.pem"\n'
        'client_ca = "tls/clients-ca.pem"\n'
        f'client_auth = "{client_auth}"\n'
        f'principal_from = "{principal_from}"\n'
    )


class TlsGateway:
    """A gateway with its HTTPS address and the certificates of its run."""

    def __init__(self, gw, tls_dir: Path, clients: Ca, foreign: Ca):
        self.gw = gw
        host, port = read_ready_file(gw.ready_file)["s3_tls"].rsplit(":", 1)
        assert host == "127.0.0.1"
        self.port = int(port)
        self.dir = tls_dir
        self.ca = tls_dir / "server-ca.pem"
        self.clients = clients
        self.foreign = foreign

    @property
    def https(self) -> str:
        return f"https://localhost:{self.port}"

    def client(self, name: str) -> tuple[Path, Path]:
        return (self.dir / f"{name}.pem", self.dir / f"{name}-key.pem")


def start_tls_gateway(tmp: Path, backend, name: str, client_auth: str, principal_from: str, extra_args=()) -> TlsGateway:
    tls = tmp / "tls"
    server_ca = Ca(tls, "server CA")
    shutil.copy(server_ca.cert, tls / "server-ca.pem")
    server_ca.server("server")
    clients = Ca(tls, "clients CA")
    shutil.copy(clients.cert, tls / "clients-ca.pem")
    clients.issue("reader", READER)
    clients.issue("analyst", ANALYST, ous=("analysts",))
    clients.issue("nobody", NOBODY)
    clients.issue("spiffe", "ignored-cn", sans=(uri(SPIFFE_READER),))
    foreign = Ca(tls, "foreign CA")
    foreign.issue("foreign-reader", READER)
    gw = launch_gateway(
        tmp,
        backend,
        name,
        extra_config=rules_config(TLS_RULES) + tls_section(client_auth, principal_from),
        extra_args=list(extra_args),
        log_level="debug",
    )
    return TlsGateway(gw, tls, clients, foreign)


@pytest.fixture(scope="module")
def tgw(backend, tmp_path_factory):
    """client_auth = "optional", principal from the CN."""
    t = start_tls_gateway(tmp_path_factory.mktemp("tls-optional"), backend, "s3gate-tls", "optional", "cn")
    yield t
    stop_gateway(t.gw)


@pytest.fixture(scope="module")
def required_gw(backend, tmp_path_factory):
    """client_auth = "required", principal from the URI SAN."""
    t = start_tls_gateway(tmp_path_factory.mktemp("tls-required"), backend, "s3gate-tls-req", "required", "san_uri")
    yield t
    stop_gateway(t.gw)


# --------------------------------------------------------------------------- curl


class Curl:
    def __init__(self, rc: int, status: int, version: str, request_id: str, body: bytes, stderr: str, timing: dict):
        self.rc, self.status, self.version, self.request_id = rc, status, version, request_id
        self.body, self.stderr, self.timing = body, stderr, timing

    def __repr__(self):
        return f"curl rc={self.rc} status={self.status} http/{self.version} body={self.body[:300]!r} stderr={self.stderr!r}"


def curl(t: TlsGateway, path: str, *args: str, cert: str | None = None, sigv4: tuple[str, str] | None = None, host: str = "localhost") -> Curl:
    """curl against the gateway's HTTPS port, trusting the test CA; `cert`
    names a client certificate of the run; `sigv4` = (access key, secret)."""
    out = t.dir / f"curl-{uuid.uuid4().hex}.out"
    argv = [
        "curl", "-sS", "--max-time", "60", "--cacert", str(t.ca), "-o", str(out),
        "-w", "%{http_code} %{http_version} %{time_connect} %{time_appconnect} %header{x-amz-request-id}",
    ]
    if cert:
        c, k = t.client(cert)
        argv += ["--cert", str(c), "--key", str(k)]
    if sigv4:
        # curl 7.88 signs x-amz-* headers it is given; S3 wants the payload hash.
        argv += ["--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", f"{sigv4[0]}:{sigv4[1]}"]
        if not any(a.startswith("x-amz-content-sha256") for a in args):
            argv += ["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
    argv += [*args, f"https://{host}:{t.port}{path}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    fields = (p.stdout.split(" ") + ["", "", "", "", ""])[:5]
    body = out.read_bytes() if out.exists() else b""
    out.unlink(missing_ok=True)
    timing = {"connect": float(fields[2] or 0), "tls": float(fields[3] or 0)}
    return Curl(p.returncode, int(fields[0] or 0), fields[1], fields[4].strip(), body, p.stderr, timing)


def refused_handshake(r: Curl) -> bool:
    """curl got no HTTP answer: the TLS handshake (or, with TLS 1.3, the
    first read after it, where a client certificate's rejection arrives)
    failed."""
    return r.rc != 0 and r.status == 0


# --------------------------------------------------------------------------- configuration

MINIMAL = """\
[[backends]]
name = "local"
endpoint = "http://127.0.0.1:9"
access_key = "BACKENDKEY"
secret_key = "backend-inline-secret-0000"
[[buckets]]
name = "data"
backend = "local"
"""


def test_tls_config_errors_say_where_and_exit_64(tmp_path):
    ca = Ca(tmp_path / "tls", "cfg CA")
    ca.server("server")
    other = ca.server("other")
    shutil.copy(ca.cert, tmp_path / "tls" / "clients-ca.pem")

    def run(tls: str, *cmd: str) -> subprocess.CompletedProcess:
        cfg = tmp_path / "s3gate.toml"
        cfg.write_text(MINIMAL + tls)
        argv = [str(gateway_bin()), *(cmd or ("serve", "--config")), str(cfg)]
        if not cmd:
            argv += ["--listen", "127.0.0.1:0"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

    good = tls_section("required", "san_email")
    p = run(good, "check-config")
    assert p.returncode == 0, p.stderr
    assert '\n[tls]\nlisten = "127.0.0.1:0"\n' in p.stdout, p.stdout
    assert f'cert = "{tmp_path}/tls/server.pem"' in p.stdout, p.stdout
    assert 'client_auth = "required"\nprincipal_from = "san_email"\n' in p.stdout, p.stdout

    cases = [
        (good.replace('"required"', '"always"'), "s3gate.toml:15:15: tls.client_auth: unknown variant `always`"),
        (good.replace('client_ca = "tls/clients-ca.pem"\n', ""), "s3gate.toml:14:15: tls.client_auth: client_auth = \"required\" needs client_ca"),
        (good.replace("tls/server.pem", "tls/missing.pem"), "s3gate.toml:12:8: tls.cert: cannot read "),
        (good.replace("tls/server-key.pem", "tls/other-key.pem"), "s3gate.toml:13:7: tls.key: "),
        (good.replace("tls/server.pem", "tls/server-key.pem"), "s3gate.toml:12:8: tls.cert: "),
    ]
    for tls, want in cases:
        for cmd in [(), ("check-config",)]:
            p = run(tls, *cmd)
            assert p.returncode == EX_USAGE, (cmd, p.returncode, p.stderr)
            assert "invalid config " in p.stderr and want in p.stderr, (cmd, want, p.stderr)
    # The key of another certificate is named as such.
    p = run(good.replace("tls/server-key.pem", "tls/other-key.pem"))
    assert "does not belong to the certificate" in p.stderr, p.stderr
    assert other.serial


# --------------------------------------------------------------------------- boto3 and the aws cli over https


def test_boto3_over_https_put_get_list_multipart_with_default_crc32_trailers(tgw):
    alice = tgw.gw.keys["alice"]
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=tgw.https,
        region_name=REGION,
        aws_access_key_id=alice.access_key,
        aws_secret_access_key=alice.secret_key,
        verify=str(tgw.ca),
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    sent: list[dict[str, str]] = []

    def record(request, **_):
        def text(v):
            return v.decode() if isinstance(v, bytes) else str(v)

        sent.append({k.lower(): text(v) for k, v in request.headers.items()})

    s3.meta.events.register("before-send.s3.PutObject", record)
    prefix = f"https/{uuid.uuid4().hex[:8]}/"
    body = os.urandom(3 * MiB + 17)
    s3.put_object(Bucket="data", Key=prefix + "one", Body=body)
    # Over https, boto3's default is an unsigned aws-chunked body with a
    # CRC32 trailer: the path that must pass.
    put = sent[0]
    assert put["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", put
    assert put["x-amz-trailer"] == "x-amz-checksum-crc32", put
    assert s3.get_object(Bucket="data", Key=prefix + "one")["Body"].read() == body
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", [])]
    assert listed == [prefix + "one"]
    # Multipart: two parts of 5 MiB and a tail.
    big = os.urandom(11 * MiB)
    mpu = s3.create_multipart_upload(Bucket="data", Key=prefix + "big")
    parts = []
    for n, at in enumerate(range(0, len(big), 5 * MiB), start=1):
        r = s3.upload_part(Bucket="data", Key=prefix + "big", UploadId=mpu["UploadId"], PartNumber=n, Body=big[at : at + 5 * MiB])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket="data", Key=prefix + "big", UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket="data", Key=prefix + "big")["Body"].read() == big
    # Plain HTTP still works alongside.
    plain = boto3.session.Session().client(
        "s3",
        endpoint_url=tgw.gw.endpoint,
        region_name=REGION,
        aws_access_key_id=alice.access_key,
        aws_secret_access_key=alice.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    assert plain.get_object(Bucket="data", Key=prefix + "one")["Body"].read() == body
    # Without the test CA, the certificate is not trusted.
    untrusting = boto3.session.Session().client(
        "s3", endpoint_url=tgw.https, region_name=REGION, aws_access_key_id=alice.access_key,
        aws_secret_access_key=alice.secret_key, config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    with pytest.raises(Exception, match="(?i)certificate"):
        untrusting.head_object(Bucket="data", Key=prefix + "one")


def test_awscli_over_https_cp_ls_and_multipart(tgw, tmp_path):
    exe = shutil.which("aws")
    assert exe, "aws cli not found (pip install -r tests/e2e/requirements.txt)"
    alice = tgw.gw.keys["alice"]
    cfg = tmp_path / "config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(cfg),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_ACCESS_KEY_ID": alice.access_key,
        "AWS_SECRET_ACCESS_KEY": alice.secret_key,
        "AWS_CA_BUNDLE": str(tgw.ca),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    for k in ("PYENV_ROOT", "PYENV_VERSION", "LANG", "LC_ALL"):
        if k in os.environ:
            env[k] = os.environ[k]

    def aws(*args: str) -> str:
        p = subprocess.run([exe, "--endpoint-url", tgw.https, *args], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"aws {' '.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p.stdout

    prefix = f"awscli-https/{uuid.uuid4().hex[:8]}/"
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(os.urandom(100_000))
    big.write_bytes(os.urandom(20 * MiB))  # past the cli's 8 MiB multipart threshold
    aws("s3", "cp", str(small), f"s3://data/{prefix}small")
    aws("s3", "cp", str(big), f"s3://data/{prefix}big")
    listing = aws("s3", "ls", f"s3://data/{prefix}")
    assert "small" in listing and "big" in listing, listing
    for name, src in (("small", small), ("big", big)):
        dst = tmp_path / f"{name}.down"
        aws("s3", "cp", f"s3://data/{prefix}{name}", str(dst))
        assert dst.read_bytes() == src.read_bytes()


# --------------------------------------------------------------------------- HTTP/2


def test_curl_http2_get_put_sigv4(tgw, tmp_path):
    alice = tgw.gw.keys["alice"]
    key = f"/data/h2/{uuid.uuid4().hex[:8]}"
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(2 * MiB + 3))
    put = curl(tgw, key, "--http2", "-T", str(payload), sigv4=(alice.access_key, alice.secret_key))
    assert (put.status, put.version) == (200, "2"), put
    get = curl(tgw, key, "--http2", sigv4=(alice.access_key, alice.secret_key))
    assert (get.status, get.version) == (200, "2"), get
    assert get.body == payload.read_bytes()
    # The signature covers `host`, which HTTP/2 sends as :authority; by IP too.
    by_ip = curl(tgw, key, "--http2", sigv4=(alice.access_key, alice.secret_key), host="127.0.0.1")
    assert (by_ip.status, by_ip.version) == (200, "2"), by_ip
    # A wrong secret is still refused over h2.
    bad = curl(tgw, key, "--http2", sigv4=(alice.access_key, "not-the-secret-0000"))
    assert (bad.status, bad.version) == (403, "2"), bad
    assert b"SignatureDoesNotMatch" in bad.body
    # ALPN http/1.1 gets HTTP/1.1 on the same port.
    h1 = curl(tgw, key, "--http1.1", sigv4=(alice.access_key, alice.secret_key))
    assert (h1.status, h1.version) == (200, "1.1"), h1
    line = access_log_line(tgw.gw, get.request_id)
    assert 'principal="alice"' in line and 'identity="key"' in line, line
    print(f"\nTLS handshake (curl, localhost, ECDSA P-256, TLS 1.3): {1000 * (get.timing['tls'] - get.timing['connect']):.2f} ms")


# --------------------------------------------------------------------------- mTLS


def test_mtls_cn_is_the_principal_and_ou_the_groups(tgw, backend):
    key = f"mtls/{uuid.uuid4().hex[:8]}"
    backend.put("data-prod", key, b"for certificate holders")
    # A rule on the CN's principal lets it read ...
    r = curl(tgw, f"/data/{key}", cert="reader")
    assert (r.status, r.body) == (200, b"for certificate holders"), r
    line = access_log_line(tgw.gw, r.request_id)
    assert f'principal="{READER}"' in line and 'identity="mtls"' in line, line
    # ... and nothing else.
    r = curl(tgw, f"/data/{key}", "-T", "-", cert="reader")
    assert r.status == 403, r
    # Another CN, no rule: denied.
    r = curl(tgw, f"/data/{key}", cert="nobody")
    assert r.status == 403 and b"AccessDenied" in r.body, r
    # No rule names olga, but her OU is the analysts group, which reads data.
    r = curl(tgw, f"/data/{key}", cert="analyst")
    assert (r.status, r.body) == (200, b"for certificate holders"), r
    assert f'principal="{ANALYST}"' in access_log_line(tgw.gw, r.request_id)
    # Over HTTP/2 as well.
    r = curl(tgw, f"/data/{key}", "--http2", cert="reader")
    assert (r.status, r.version) == (200, "2"), r
    # Without a certificate (optional): anonymous, which may read public only.
    assert curl(tgw, f"/data/{key}").status == 403
    # A certificate from another CA is refused in the handshake.
    c, k = tgw.foreign.dir / "foreign-reader.pem", tgw.foreign.dir / "foreign-reader-key.pem"
    r = curl(tgw, f"/data/{key}", "--cert", str(c), "--key", str(k))
    assert refused_handshake(r), r
    # A signed request on a certificate connection is its key's principal.
    bob = tgw.gw.keys["bob"]
    r = curl(tgw, f"/data/{key}", cert="reader", sigv4=(bob.access_key, bob.secret_key))
    assert r.status == 403, r  # bob may read data/reports/* only; the certificate adds nothing
    line = access_log_line(tgw.gw, r.request_id)
    assert 'principal="bob"' in line and 'identity="key"' in line, line


def test_mtls_required(required_gw, backend):
    t = required_gw
    key = f"mtls-req/{uuid.uuid4().hex[:8]}"
    backend.put("data-prod", key, b"required")
    # No certificate: no connection.
    r = curl(t, f"/data/{key}")
    assert refused_handshake(r), r
    alice = t.gw.keys["alice"]
    r = curl(t, f"/data/{key}", sigv4=(alice.access_key, alice.secret_key))
    assert refused_handshake(r), r
    # Another CA's certificate: no connection.
    r = curl(t, f"/data/{key}", "--cert", str(t.foreign.dir / "foreign-reader.pem"), "--key", str(t.foreign.dir / "foreign-reader-key.pem"))
    assert refused_handshake(r), r
    # principal_from = "san_uri": the URI SAN is the principal.
    r = curl(t, f"/data/{key}", cert="spiffe")
    assert (r.status, r.body) == (200, b"required"), r
    assert f'principal="{SPIFFE_READER}"' in access_log_line(t.gw, r.request_id)
    # A certificate without a URI SAN names nobody.
    r = curl(t, f"/data/{key}", cert="reader")
    assert r.status == 403, r
    # A SigV4 request on an mTLS connection is its key's principal: the
    # certificate (which names nobody here) only opened the connection.
    r = curl(t, f"/data/{key}", cert="reader", sigv4=(alice.access_key, alice.secret_key))
    assert (r.status, r.body) == (200, b"required"), r
    line = access_log_line(t.gw, r.request_id)
    assert 'principal="alice"' in line and 'identity="key"' in line, line
    # boto3 with a client certificate: the same.
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=t.https, region_name=REGION, aws_access_key_id=alice.access_key,
        aws_secret_access_key=alice.secret_key, verify=str(t.ca),
        config=Config(s3={"addressing_style": "path"}, client_cert=tuple(map(str, t.client("reader"))),
                      retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == b"required"
    # The plain-HTTP listener is not affected by client_auth.
    assert t.gw.raw("alice").request("GET", f"/data/{key}").status == 200


def test_dataplane_tls_flags_and_mtls_through_grpc(backend, tmp_path):
    """`s3gate dataplane` with the --tls-* flags (and their env twins): the
    certificate's name travels to a separate control plane over gRPC
    (Authenticate), which makes it a principal with the OU groups."""
    keys = make_keys()
    cfg = tmp_path / "cp.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + rules_config(TLS_RULES))
    env = gateway_env(backend, keys, "debug")
    cp, cp_addr = start_controlplane(gateway_bin(), "cp-tls", config=cfg, env=env, **node_files(tmp_path, "cp-tls"))
    tls = tmp_path / "tls"
    server_ca = Ca(tls, "server CA")
    shutil.copy(server_ca.cert, tls / "server-ca.pem")
    server_ca.server("server")
    clients = Ca(tls, "clients CA")
    clients.issue("reader", READER)
    clients.issue("analyst", ANALYST, ous=("analysts",))
    clients.issue("nobody", NOBODY)
    procs = [cp]
    try:
        flags = ["--tls-listen", "127.0.0.1:0", "--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server-key.pem"),
                 "--tls-client-ca", str(clients.cert), "--tls-client-auth", "required"]  # fmt: skip
        dp, plain = start_dataplane(gateway_bin(), "dp-tls", control_planes=[f"http://{cp_addr}"], region=REGION,
                                    env=env, extra_args=flags, **node_files(tmp_path, "dp-tls"))  # fmt: skip
        procs.append(dp)
        t = TlsGateway.__new__(TlsGateway)
        t.dir, t.ca, t.foreign = tls, tls / "server-ca.pem", None
        t.port = int(read_ready_file(tmp_path / "dp-tls.ready.json")["s3_tls"].rsplit(":", 1)[1])
        backend.put("data-prod", "dp-tls/obj", b"through the data plane")
        r = curl(t, "/data/dp-tls/obj", "--http2", cert="reader")
        assert (r.status, r.version, r.body) == (200, "2", b"through the data plane"), r
        assert curl(t, "/data/dp-tls/obj", cert="analyst").status == 200
        assert curl(t, "/data/dp-tls/obj", cert="nobody").status == 403
        assert refused_handshake(curl(t, "/data/dp-tls/obj"))
        assert plain.startswith("127.0.0.1:")

        # HTTPS only, configured through the environment: no plain listener.
        ready = tmp_path / "dp-only.ready.json"
        only_env = {**env, "S3GATE_DP_TLS_LISTEN": "127.0.0.1:0", "S3GATE_DP_TLS_CERT": str(tls / "server.pem"),
                    "S3GATE_DP_TLS_KEY": str(tls / "server-key.pem")}  # fmt: skip
        dp2, addr = start_with_ready_file(
            "dp-only", [str(gateway_bin()), "dataplane", "--control-plane", f"http://{cp_addr}", "--ready-file", str(ready)],
            ready, "s3_tls", tmp_path / "dp-only.log", only_env,
        )
        procs.append(dp2)
        assert set(read_ready_file(ready)) == {"s3_tls"}, read_ready_file(ready)
        t.port = int(addr.rsplit(":", 1)[1])
        alice = keys["alice"]
        r = curl(t, "/data/dp-tls/obj", sigv4=(alice.access_key, alice.secret_key))
        assert (r.status, r.body) == (200, b"through the data plane"), r
    finally:
        for p in reversed(procs):
            p.stop()


# --------------------------------------------------------------------------- certificate reload


def served_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return serial_of(s.getpeercert(binary_form=True))


def wait_for_log(gw, pattern: str, after: int, timeout: float = 15) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        text = gw.log_path.read_text(errors="replace")[after:]
        m = re.search(pattern, re.sub(r"\x1b\[[0-9;]*m", "", text))
        if m:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matching {pattern!r} in {gw.log_path} after offset {after}")
        time.sleep(0.1)


def test_cert_reload_while_a_1gib_get_streams(backend, tmp_path):
    t = start_tls_gateway(tmp_path, backend, "s3gate-tls-reload", "none", "cn")
    try:
        server_ca = Ca(tmp_path / "ca2", "server CA 2")
        # The clients trust both CAs.
        trust = t.dir / "trust.pem"
        trust.write_bytes(t.ca.read_bytes() + server_ca.cert.read_bytes())
        first = served_serial(t.port, trust)

        key = f"reload/{uuid.uuid4().hex[:8]}.bin"
        path = backend.file("data-prod", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        want = hashlib.sha256()
        with open(path, "wb") as f:
            for block in pattern_stream(GiB):
                f.write(block)
                want.update(block)

        ctx = ssl.create_default_context(cafile=str(trust))
        conn = http.client.HTTPSConnection("localhost", t.port, context=ctx, timeout=120)
        h = sign("GET", f"/data/{key}", (), {"host": f"localhost:{t.port}"}, EMPTY_SHA, t.gw.keys["alice"].creds).headers
        conn.putrequest("GET", target_for(f"/data/{key}"), skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 200, resp.read(500)
        got = hashlib.sha256()
        n = 0

        def read(upto: int):
            nonlocal n
            while n < upto:
                b = resp.read(min(MiB, upto - n))
                if not b:
                    break
                got.update(b)
                n += len(b)

        read(64 * MiB)
        assert serial_of(conn.sock.getpeercert(binary_form=True)) == first

        # A new pair, written over the old files: picked up on file change.
        mark = len(t.gw.log_path.read_text(errors="replace"))
        second = server_ca.server("next")
        os.replace(second.key, t.dir / "server-key.pem")
        os.replace(second.cert, t.dir / "server.pem")
        m = wait_for_log(t.gw, r"TLS certificate loaded.*serial=([0-9A-F]+)", mark)
        assert int(m.group(1), 16) == second.serial, m.group(0)
        assert served_serial(t.port, trust) == second.serial

        read(512 * MiB)

        # A certificate whose key is not the one on disk: refused, with the
        # reason; the second pair keeps serving.
        mark = len(t.gw.log_path.read_text(errors="replace"))
        third = server_ca.server("third")
        os.replace(third.cert, t.dir / "server.pem")
        m = wait_for_log(t.gw, r"new TLS certificate refused.*", mark)
        assert "does not belong to the certificate" in m.group(0), m.group(0)
        assert served_serial(t.port, trust) == second.serial
        # SIGHUP re-reads (and refuses again).
        mark = len(t.gw.log_path.read_text(errors="replace"))
        t.gw.proc.popen.send_signal(signal.SIGHUP)
        m = wait_for_log(t.gw, r'new TLS certificate refused.*cause="?SIGHUP', mark)
        assert served_serial(t.port, trust) == second.serial
        assert t.gw.proc.alive()

        # The download that started under the first certificate completes.
        read(GiB + 1)
        conn.close()
        assert n == GiB
        assert got.hexdigest() == want.hexdigest()
    finally:
        backend.file("data-prod", key).unlink(missing_ok=True) if "key" in locals() else None
        stop_gateway(t.gw)


# --------------------------------------------------------------------------- HTTP/2 limits, per stream


class H2:
    """A hand-driven HTTP/2 client (the h2 library) over TLS: it grants flow
    control only when told to, so a stream can stop reading while its
    connection stays alive (PINGs are answered)."""

    def __init__(self, port: int, ca: Path):
        import h2.config
        import h2.connection

        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.port = port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.closed = False
        self.responses: dict[int, dict] = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, creds, method: str, path: str, payload_hash: str = EMPTY_SHA, extra: dict | None = None, end: bool = True) -> int:
        h = sign(method, path, (), {"host": f"localhost:{self.port}", **(extra or {})}, payload_hash, creds).headers
        del h["host"]  # HTTP/2 names the host in :authority only
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "https"), (":authority", f"localhost:{self.port}"), (":path", target_for(path))]
        self.conn.send_headers(sid, headers + list(h.items()), end_stream=end)
        self.flush()
        self.responses[sid] = {"status": None, "data": b"", "ended": False, "reset": False}
        return sid

    def pump(self, timeout: float, until=lambda: False, grant: bool = True) -> None:
        """Reads and handles frames until `until()` or `timeout` or the
        connection closes. `grant`: give back flow-control window for data
        received (a reading client); without, the windows stay shut."""
        import h2.events
        import h2.exceptions

        deadline = time.monotonic() + timeout
        while not self.closed and not until() and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (ssl.SSLError, ConnectionError, OSError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # Frames after a GOAWAY (hyper's graceful close pings): the
                # library has closed the connection already.
                self.closed = True
                break
            for ev in events:
                r = self.responses.get(getattr(ev, "stream_id", -1))
                if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                    r["status"] = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and r is not None:
                    r["data"] += ev.data
                    if grant:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                    r["ended"] = True
                elif isinstance(ev, h2.events.StreamReset) and r is not None:
                    r["reset"] = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.closed = True
            try:
                self.flush()
            except OSError:
                self.closed = True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture(scope="module")
def h2gw(backend, tmp_path_factory):
    try:
        import h2  # noqa: F401
    except ImportError:
        pytest.fail("the h2 library is missing: pip install -r tests/e2e/requirements.txt")
    t = start_tls_gateway(
        tmp_path_factory.mktemp("tls-h2"), backend, "s3gate-tls-h2", "none", "cn",
        extra_args=["--max-requests", "1", "--send-timeout", "2s", "--body-idle-timeout", "2s", "--header-timeout", "3s"],
    )
    yield t
    stop_gateway(t.gw)


def test_h2_settings_and_idle_connections_close(h2gw, backend):
    backend.put("data-prod", "h2/small", b"small")
    c = H2(h2gw.port, h2gw.ca)
    try:
        sid = c.request(h2gw.gw.keys["alice"].creds, "GET", "/data/h2/small")
        c.pump(10, until=lambda: c.responses[sid]["ended"])
        assert (c.responses[sid]["status"], c.responses[sid]["data"]) == (200, b"small")
        assert c.conn.remote_settings.max_concurrent_streams == 100
        # Idle for the header timeout (3 s): the gateway says GOAWAY and closes.
        t0 = time.monotonic()
        c.pump(15)
        idle = time.monotonic() - t0
        assert c.closed, "an idle HTTP/2 connection stayed open"
        assert 2.5 < idle < 10, idle
    finally:
        c.close()


def test_h2_stalled_stream_releases_its_request_after_the_send_timeout(h2gw, backend):
    alice = h2gw.gw.keys["alice"].creds
    backend.put("data-prod", "h2/big", os.urandom(8 * MiB))
    backend.put("data-prod", "h2/small", b"small")
    a = H2(h2gw.port, h2gw.ca)
    b = H2(h2gw.port, h2gw.ca)
    try:
        sid = a.request(alice, "GET", "/data/h2/big")
        # Take the first window's worth, then stop reading that stream (the
        # connection keeps answering pings).
        a.pump(10, until=lambda: len(a.responses[sid]["data"]) >= 32 << 10, grant=False)
        assert a.responses[sid]["status"] == 200
        stalled_at = time.monotonic()
        # --max-requests 1: while the stalled stream holds its request,
        # another is shed.
        other = b.request(alice, "GET", "/data/h2/small")
        b.pump(5, until=lambda: b.responses[other]["ended"])
        assert b.responses[other]["status"] == 503 and b"SlowDown" in b.responses[other]["data"], b.responses[other]
        # After the send timeout (2 s) the gateway gives up on the stream
        # and, as on HTTP/1.1, closes the connection.
        a.pump(15, grant=False)
        assert a.closed and not a.responses[sid]["ended"], a.responses[sid]["status"]
        waited = time.monotonic() - stalled_at
        assert 1.5 < waited < 10, waited
        # The request is released: the next one is served.
        c = H2(h2gw.port, h2gw.ca)
        again = c.request(alice, "GET", "/data/h2/small")
        c.pump(10, until=lambda: c.responses[again]["ended"])
        c.close()
        assert c.responses[again]["status"] == 200, c.responses[again]
    finally:
        a.close()
        b.close()


def test_h2_stalled_upload_times_out_alone(h2gw, backend):
    alice = h2gw.gw.keys["alice"].creds
    backend.put("data-prod", "h2/small", b"small")
    c = H2(h2gw.port, h2gw.ca)
    try:
        sid = c.request(alice, "PUT", "/data/h2/stalled", "UNSIGNED-PAYLOAD", {"content-length": str(MiB)}, end=False)
        c.conn.send_data(sid, b"x" * 1024)
        c.flush()
        t0 = time.monotonic()
        c.pump(15, until=lambda: c.responses[sid]["status"] is not None)
        took = time.monotonic() - t0
        r = c.responses[sid]
        assert r["status"] == 400, r
        c.pump(5, until=lambda: c.responses[sid]["ended"] or c.responses[sid]["reset"])
        assert b"RequestTimeout" in r["data"], r
        assert 1.5 < took < 10, took
        # Only that stream failed: the connection serves the next request.
        nxt = c.request(alice, "GET", "/data/h2/small")
        c.pump(10, until=lambda: c.responses[nxt]["ended"])
        assert c.responses[nxt]["status"] == 200, c.responses[nxt]
    finally:
        c.close()
