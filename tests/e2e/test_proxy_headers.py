"""Behind a load balancer: `trusted_proxies`.

A real haproxy (Debian) terminates TLS for `*.s3.localhost` with a
certificate made by the test, sets `X-Forwarded-Host` (the host the client
addressed), `X-Forwarded-Proto` and `X-Forwarded-For`, and rewrites `Host`
to the gateway's own address, as a balancer addressing its pool does. It
connects to the gateway from 127.0.0.2, the only trusted peer; every other
client here connects from 127.0.0.1 and is not trusted.

- Through haproxy, virtual-host requests signed for the public host verify
  (the rewritten `Host` would not), the client's address in the access log
  is the one haproxy saw (a client's own `X-Forwarded-For` is no use), and a
  multipart upload's Location says https.
- Directly, from an untrusted peer, the same headers change nothing: not
  the host a signature is checked against, not the bucket, not the address.
"""

from __future__ import annotations

import re
import socket
import subprocess
import uuid
from pathlib import Path

import boto3
import botocore.config
import pytest

from conftest import stop_gateway
from harness.procs import Proc, free_port, wait_for
from recorder import BACKEND_BUCKET, Recorder, Reply, access_log_line, launch_gateway, recorder_config
from s3util import Raw, send, sha256_hex, sign, target_for
from tlsutil import Ca

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v haproxy || test -x /usr/sbin/haproxy"], capture_output=True).returncode != 0,
    reason="haproxy is not installed (.ci/run installs it)",
)


def haproxy_exe() -> str:
    for p in ("/usr/sbin/haproxy", "/usr/bin/haproxy"):
        if Path(p).exists():
            return p
    return "haproxy"


@pytest.fixture(scope="module")
def lb(backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxyhdr")
    rec = Recorder()
    gw = launch_gateway(
        tmp,
        backend,
        "s3gate-behind-lb",
        recorder_config(rec, [("allow", ["alice"], ["s3:*"], ["rec", "rec/*"])]),
        log_level="trace",
        top_level='trusted_proxies = ["127.0.0.2/32"]\n',
    )
    ca = Ca(tmp / "ca", "proxy test CA")
    from cryptography import x509

    leaf = ca.issue(
        "lb",
        "s3.localhost",
        sans=(x509.DNSName("s3.localhost"), x509.DNSName("*.s3.localhost")),
        server=True,
    )
    pem = tmp / "lb-combined.pem"
    pem.write_bytes(leaf.cert.read_bytes() + leaf.key.read_bytes())
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(
        f"""
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend public
    bind 127.0.0.1:{port} ssl crt {pem}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto https
    option forwardfor
    # A balancer addresses its pool by the pool's own name.
    http-request set-header Host 127.0.0.1:{gw.port}
    default_backend gateways
backend gateways
    server gw1 127.0.0.1:{gw.port} source 127.0.0.2
"""
    )
    check = subprocess.run([haproxy_exe(), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = Proc("haproxy", [haproxy_exe(), "-db", "-f", str(cfg)], tmp / "haproxy.log")

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(up, "haproxy to listen", proc)
    yield dict(gw=gw, port=port, ca=ca.cert, rec=rec)
    proc.stop()
    stop_gateway(gw)
    rec.close()




def client_through(lb, who: str, **s3):
    k = lb["gw"].keys[who]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=f"https://s3.localhost:{lb['port']}",
        region_name="us-east-1",
        aws_access_key_id=k.access_key,
        aws_secret_access_key=k.secret_key,
        verify=str(lb["ca"]),
        config=botocore.config.Config(s3={"addressing_style": "virtual", **s3}, retries={"total_max_attempts": 1}),
    )


def access_fields(gw, request_id: str) -> dict[str, str]:
    """The fields of the access-log line of `request_id` (quotes removed)."""
    line = access_log_line(gw, request_id)
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


def test_virtual_host_requests_signed_for_the_public_host_verify_through_the_proxy(lb, backend, resolve_s3_localhost):
    alice = client_through(lb, "alice")
    seen = []
    alice.meta.events.register("before-send.s3", lambda request, **kw: seen.append(request.url))
    key = f"lb/{uuid.uuid4().hex}/x y.txt"
    alice.put_object(Bucket="data", Key=key, Body=b"through the balancer")
    assert seen and seen[0].startswith(f"https://data.s3.localhost:{lb['port']}/"), seen
    assert backend.file("data-prod", key).read_bytes() == b"through the balancer"
    got = alice.get_object(Bucket="data", Key=key)
    assert got["Body"].read() == b"through the balancer"
    listed = alice.list_objects_v2(Bucket="data", Prefix=key.rsplit("/", 1)[0] + "/")
    assert [o["Key"] for o in listed["Contents"]] == [key]
    # Policy still applies to what the forwarded host names: bob may not read data/lb/*.
    bob = client_through(lb, "bob")
    with pytest.raises(bob.exceptions.ClientError) as e:
        bob.get_object(Bucket="data", Key=key)
    assert e.value.response["Error"]["Code"] == "AccessDenied"


def test_the_client_address_is_what_the_proxy_saw_not_what_the_client_claims(lb, resolve_s3_localhost):
    alice = client_through(lb, "alice")
    # Added after signing: haproxy appends to it, which a signed header
    # would not survive.
    alice.meta.events.register(
        "before-send.s3", lambda request, **kw: request.headers.__setitem__("X-Forwarded-For", "203.0.113.9")
    )
    r = alice.head_bucket(Bucket="data")
    line = access_fields(lb["gw"], r["ResponseMetadata"]["RequestId"])
    # The peer is haproxy; haproxy appended the real client (127.0.0.1) after
    # the client's own claim, and only the trusted hop is believed.
    assert line["peer"].startswith("127.0.0.2:"), line
    assert line["client"] == "127.0.0.1", line


def test_a_multipart_location_names_the_scheme_the_client_used(lb, resolve_s3_localhost):
    """s3s-fs sends no Location, so the recorder answers the completion with
    one naming itself over http: the client, which spoke https to haproxy,
    gets an https Location naming its own bucket and key."""
    rec = lb["rec"]
    rec.reset(
        Reply(
            body=(
                '<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>http://127.0.0.1:1/'
                f"{BACKEND_BUCKET}/mp.bin</Location><Bucket>{BACKEND_BUCKET}</Bucket><Key>mp.bin</Key>"
                '<ETag>"abc-1"</ETag></CompleteMultipartUploadResult>'
            ).encode()
        )
    )
    alice = client_through(lb, "alice")
    done = alice.complete_multipart_upload(
        Bucket="rec", Key="mp.bin", UploadId="u1", MultipartUpload={"Parts": [{"ETag": '"e1"', "PartNumber": 1}]}
    )
    # Virtual-host style: the bucket is in the host, as the client addressed it.
    assert done["Location"] == f"https://rec.s3.localhost:{lb['port']}/mp.bin", done["Location"]
    assert done["Bucket"] == "rec"
    assert [r.method for r in rec.taken()] == ["POST"]


def test_from_an_untrusted_peer_forwarding_headers_change_nothing(lb, backend):
    gw = lb["gw"]
    key = f"direct/{uuid.uuid4().hex}.txt"
    backend.put("data-prod", key, b"direct")
    public_host = f"data.s3.localhost:{lb['port']}"
    # Signed for the public host (virtual-host style), sent to the gateway
    # directly with its real Host and a forwarded host naming the public one:
    # the forwarded host is not believed, so the signature cannot hold.
    creds = gw.keys["alice"].creds
    signed = sign("GET", "/" + key, [], {"host": public_host}, sha256_hex(b""), creds).headers
    signed = {k: v for k, v in signed.items() if k.lower() != "host"}
    r = send(
        gw.addr,
        "GET",
        target_for("/" + key),
        {"host": f"127.0.0.1:{gw.port}", "x-forwarded-host": public_host, "x-forwarded-proto": "https", **signed},
    )
    assert r.status == 403, r.describe()
    assert b"SignatureDoesNotMatch" in r.body, r.describe()
    # The same through the trusted proxy's address would have verified: the
    # request as the proxy sends it (from 127.0.0.2) does.
    r2 = send_from(
        "127.0.0.2",
        gw.addr,
        "GET",
        target_for("/" + key),
        {"host": f"127.0.0.1:{gw.port}", "x-forwarded-host": public_host, **signed},
    )
    assert r2 == 200, r2
    # A correctly signed path-style request carrying a forwarded host that
    # names another bucket is still about the bucket of its path, and the
    # client claimed in X-Forwarded-For is not logged as the client.
    r = Raw(gw.addr, creds).request(
        "GET",
        "/data/" + key,
        headers={"x-forwarded-host": f"other.s3.localhost:{gw.port}", "x-forwarded-for": "203.0.113.9"},
    )
    assert r.status == 200, r.describe()
    assert r.body == b"direct"
    line = access_fields(gw, r.headers["x-amz-request-id"])
    assert line["bucket"] == "data", line
    assert "client" not in line, line


def send_from(source: str, addr, method: str, target: str, headers: dict[str, str]) -> int:
    """A request from `source` (a loopback address other than 127.0.0.1): the
    status code."""
    import http.client

    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=30, source_address=(source, 0))
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_a_bad_trusted_proxies_entry_is_a_config_error(tmp_path, backend):
    from conftest import gateway_bin, make_keys, render_config, unused_port

    cfg = tmp_path / "bad.toml"
    cfg.write_text('trusted_proxies = ["10.0.0.0/8", "lb.internal"]\n' + render_config(backend, make_keys(), unused_port()))
    r = subprocess.run([str(gateway_bin()), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "trusted_proxies" in r.stderr and "lb.internal" in r.stderr, r.stderr
    assert f"{cfg}:1:" in r.stderr or "bad.toml:1:" in r.stderr, r.stderr
