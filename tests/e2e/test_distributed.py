"""The distributed deployment: `s3gate controlplane` replicas serving gRPC, and
stateless `s3gate dataplane` processes that ask them, with a real s3s-fs
behind. Two control planes, two data planes, each data plane given both
control-plane URLs.

Covers: both data planes serve the same config; gRPC reflection and health;
failover to the second control plane; failing closed (503) for uncached
decisions when no control plane answers, while cached ones keep serving until
their TTL; recovery when a control plane comes back on the same address,
without restarting data planes.
"""

import socket
import struct
import uuid

import botocore.exceptions
import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import REGION, Proc, _client, gateway_bin, gateway_env, make_keys, node_files, render_config, unused_port
from harness.cluster import start_controlplane, start_dataplane


class Cluster:
    def __init__(self, tmp, backend):
        self.tmp = tmp
        self.backend = backend
        self.keys = make_keys()
        self.config = tmp / "cluster.toml"
        self.config.write_text(render_config(backend, self.keys, unused_port()))
        self.env = gateway_env(backend, self.keys, "debug")
        self.cps: dict[str, Proc] = {}
        self.cp_addrs: dict[str, str] = {}
        self.dps: dict[str, Proc] = {}
        self.dp_addrs: dict[str, str] = {}

    def start_cp(self, name: str, listen: str = "127.0.0.1:0") -> str:
        proc, addr = start_controlplane(gateway_bin(), name, config=self.config, listen=listen, replica=name,
                                        env=self.env, **node_files(self.tmp, name))
        self.cps[name] = proc
        self.cp_addrs[name] = addr
        return addr

    def start_dp(self, name: str) -> str:
        # the control planes as one comma-separated --control-plane value
        urls = ",".join(f"http://{a}" for a in self.cp_addrs.values())
        proc, addr = start_dataplane(gateway_bin(), name, control_planes=[urls], region=REGION,
                                     extra_args=["--rpc-timeout", "1s"], env=self.env, **node_files(self.tmp, name))
        self.dps[name] = proc
        self.dp_addrs[name] = addr
        return addr

    def client(self, dp: str, who: str = "alice"):
        k = self.keys[who]
        return _client(f"http://{self.dp_addrs[dp]}", k.access_key, k.secret_key)

    def stop_all(self):
        for p in [*self.dps.values(), *self.cps.values()]:
            p.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, backend):
    c = Cluster(tmp_path_factory.mktemp("cluster"), backend)
    c.start_cp("cp1")
    c.start_cp("cp2")
    c.start_dp("dp1")
    c.start_dp("dp2")
    yield c
    c.stop_all()
    for p in [*c.dps.values(), *c.cps.values()]:
        text = p.log_path.read_text(errors="replace")
        for what, value in {"backend secret": c.backend.creds.secret_key,
                            **{k.principal: k.secret_key for k in c.keys.values()}}.items():
            assert value not in text, f"{what} leaked into {p.name}'s log"


def key() -> str:
    return f"dist/{uuid.uuid4().hex}.txt"


def test_both_data_planes_serve(cluster, backend):
    k = key()
    cluster.client("dp1").put_object(Bucket="data", Key=k, Body=b"via dp1")
    assert backend.file("data-prod", k).read_bytes() == b"via dp1"
    assert cluster.client("dp2").get_object(Bucket="data", Key=k)["Body"].read() == b"via dp1"
    # policy comes from the control plane: bob is limited to reports/
    with pytest.raises(botocore.exceptions.ClientError) as e:
        cluster.client("dp2", "bob").get_object(Bucket="data", Key=k)
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert [b["Name"] for b in cluster.client("dp1").list_buckets()["Buckets"]] == ["data", "dead", "public"]


def test_reflection_and_health(cluster):
    channel = grpc.insecure_channel(cluster.cp_addrs["cp1"])
    try:
        services = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert "s3gate.v1.Decisions" in services, services
        assert "grpc.health.v1.Health" in services, services
        desc = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("s3gate.v1.Decisions")
        methods = {m.name for s in desc.service for m in s.method}
        assert {"SigningKey", "Authenticate", "Authorize", "GetRoute", "VisibleBuckets", "Watch"} <= methods
        # Authenticate is in the contract; no identity source of today accepts
        # a bearer token, so it is refused, never answered with a principal.
        # AuthenticateRequest{bearer_token: BearerToken{token: "x.y.z"}}:
        authenticate = channel.unary_unary("/s3gate.v1.Decisions/Authenticate")
        with pytest.raises(grpc.RpcError) as e:
            authenticate(b"\x0a\x07\x0a\x05x.y.z", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
        assert "no identity source accepts bearer tokens" in e.value.details()
        # the standard health check, by hand-encoded protobuf (HealthCheckRequest{service=""})
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=5) == b"\x08\x01"  # status: SERVING
    finally:
        channel.close()


def server_settings(addr: str) -> dict[int, int]:
    """The HTTP/2 SETTINGS a gRPC server sends first, read off the wire: send
    the client preface and an empty SETTINGS frame, parse frames until the
    server's own (non-ACK) SETTINGS arrives."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        buf = b""
        while True:
            while len(buf) < 9:
                chunk = sock.recv(4096)
                assert chunk, "the server closed before sending SETTINGS"
                buf += chunk
            length = int.from_bytes(buf[:3], "big")
            kind, flags = buf[3], buf[4]
            while len(buf) < 9 + length:
                chunk = sock.recv(4096)
                assert chunk, "the server closed mid-frame"
                buf += chunk
            payload, buf = buf[9:9 + length], buf[9 + length:]
            if kind == 0x4 and not flags & 0x1:
                return {ident: value for ident, value in
                        (struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload), 6))}


def test_grpc_connections_are_bounded(cluster):
    # tonic sets no stream limit unless told: the control plane announces its
    # own, and a small header-list limit (hyper's default is 16 MiB).
    settings = server_settings(cluster.cp_addrs["cp1"])
    assert settings.get(0x3) == 256, settings  # SETTINGS_MAX_CONCURRENT_STREAMS
    assert settings.get(0x6) == 16384, settings  # SETTINGS_MAX_HEADER_LIST_SIZE


def test_failover_fail_closed_and_recovery(cluster, backend):
    dp = cluster.client("dp1")
    warm = key()
    dp.put_object(Bucket="data", Key=warm, Body=b"warm")
    assert dp.get_object(Bucket="data", Key=warm)["Body"].read() == b"warm"
    # bob's rule is data/reports/*: one decision holds for every key under
    # reports/, and the data plane caches it as that prefix
    bob = cluster.client("dp1", "bob")
    bob.put_object(Bucket="data", Key=f"reports/{uuid.uuid4().hex}", Body=b"b")

    # cp1 goes away: every new decision (alice's decisions are per key here,
    # because a deny glob makes keys matter) is answered by cp2.
    cp1_addr = cluster.cp_addrs["cp1"]
    # SIGTERM ends the data planes' Watch streams and exits promptly
    assert cluster.cps.pop("cp1").stop() == (0, False)
    for _ in range(3):
        k = key()
        dp.put_object(Bucket="data", Key=k, Body=b"failover")
        assert backend.file("data-prod", k).read_bytes() == b"failover"

    # no control plane at all: uncached decisions fail closed with 503 ...
    cp2_addr = cluster.cp_addrs["cp2"]
    assert cluster.cps.pop("cp2").stop() == (0, False)
    cold = key()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        dp.put_object(Bucket="data", Key=cold, Body=b"must not land")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert not backend.exists("data-prod", cold)
    # ... and an unknown key cannot authenticate (never fails open)
    stranger = _client(f"http://{cluster.dp_addrs['dp1']}", "S3GATENOBODY01", "x" * 20)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        stranger.get_object(Bucket="data", Key=warm)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    # ... while cached ones keep serving until their TTL (30 s by default)
    assert dp.get_object(Bucket="data", Key=warm)["Body"].read() == b"warm"
    # ... and so does a prefix-scoped one, for a key never asked about
    fresh = f"reports/{uuid.uuid4().hex}"
    bob.put_object(Bucket="data", Key=fresh, Body=b"under the prefix")
    assert backend.file("data-prod", fresh).read_bytes() == b"under the prefix"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bob.put_object(Bucket="data", Key=f"drafts/{uuid.uuid4().hex}", Body=b"x")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

    # a control plane comes back on cp1's address: the data planes recover
    # without a restart
    cluster.start_cp("cp1", listen=cp1_addr)
    k = key()
    dp.put_object(Bucket="data", Key=k, Body=b"recovered")
    assert cluster.client("dp2").get_object(Bucket="data", Key=k)["Body"].read() == b"recovered"
    cluster.start_cp("cp2", listen=cp2_addr)
