"""OpenTelemetry traces (`--otlp-endpoint`), received by a real OTLP/gRPC
server (tests/harness/otlp_receiver.py: grpcio + PyPI's opentelemetry-proto;
the OpenTelemetry Collector is not installable from the registries here).

Covers: one trace per request, its `s3 request` span the root, with the
stage spans (authn, authz, route, forward) as its children; the backend (a
recorder that verifies SigV4) gets a `traceparent` of the same trace whose
parent is the forward span, without the signature breaking; a client's
`traceparent` is continued only from a trusted proxy's address; in the
distributed mode the data plane's control-plane call spans are children of
the stages and the control plane's server spans children of those calls;
sampling ratio 0 exports nothing (but still tells the backend "not
sampled"); spans queued at SIGTERM are exported before exit; no span holds
a secret, a signature or a presigned query.
"""

from __future__ import annotations

import http.client
import re
import uuid

import pytest
import requests

from conftest import REGION, _client, gateway_bin, gateway_env, make_keys, node_files, render_config, stop_gateway, unused_port
from harness.cluster import start_controlplane, start_dataplane
from harness.otlp_receiver import OtlpReceiver, Span
from recorder import ACCESS_KEY, SECRET_KEY, Recorder, launch_gateway, recorder_config
from s3util import sha256_hex, sign, target_for

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
STAGES = ("authn", "authz", "route", "forward")
# Export batches every 100 ms instead of every 5 s (the SDK's standard variable).
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
RULES = [("allow", ["alice"], ["s3:*"], ["rec", "rec/*"])]


@pytest.fixture(scope="module")
def rx():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced(backend, tmp_path_factory, rx):
    """A gateway exporting every trace to `rx`, trusting 127.0.0.2 as a
    proxy, in front of a recorder that checks the backend signature."""
    rec = Recorder(keys={ACCESS_KEY: SECRET_KEY})
    gw = launch_gateway(
        tmp_path_factory.mktemp("traced"),
        backend,
        "s3gate-traced",
        recorder_config(rec, RULES),
        extra_args=["--otlp-endpoint", rx.endpoint],
        env=FAST_EXPORT,
        top_level='trusted_proxies = ["127.0.0.2/32"]\n',
    )
    yield dict(gw=gw, rec=rec)
    stop_gateway(gw)
    rec.close()


def request_span(rx: OtlpReceiver, request_id: str) -> Span:
    spans = rx.wait_for(
        lambda ss: any(s.name == "s3 request" and s.attr("request_id") == request_id for s in ss),
        f"the span of request {request_id}",
    )
    found = [s for s in spans if s.name == "s3 request" and s.attr("request_id") == request_id]
    assert len(found) == 1, found
    return found[0]


def trace_of(rx: OtlpReceiver, root: Span, names: tuple[str, ...]) -> list[Span]:
    """The spans of root's trace, once those named are all there."""
    return rx.wait_for(
        lambda ss: all(any(s.trace_id == root.trace_id and s.name == n for s in ss) for n in names),
        f"spans {names} in trace {root.trace_id}",
    )


def in_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def signed_send(gw, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", source: str = "127.0.0.1"):
    """A request signed as alice, sent from `source` (a loopback address)."""
    creds = gw.keys["alice"].creds
    h = {"host": f"127.0.0.1:{gw.port}", **(headers or {})}
    signed = sign(method, path, [], h, sha256_hex(body), creds).headers
    conn = http.client.HTTPConnection(gw.addr[0], gw.addr[1], timeout=30, source_address=(source, 0))
    try:
        conn.putrequest(method, target_for(path), skip_host=True, skip_accept_encoding=True)
        for k, v in signed.items():
            conn.putheader(k, v)
        if body or method == "PUT":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body:
            conn.send(body)
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_one_trace_per_request_with_stage_children_and_backend_traceparent(traced, rx):
    gw, rec = traced["gw"], traced["rec"]
    alice = gw.keys["alice"]
    s3 = _client(gw.endpoint, alice.access_key, alice.secret_key)
    rec.reset()
    ids = []
    for i in range(3):
        r = s3.put_object(Bucket="rec", Key=f"t/{i}", Body=b"x" * (10 + i))
        ids.append(r["ResponseMetadata"]["RequestId"])
    roots = [request_span(rx, rid) for rid in ids]
    # One trace per request, each rooted at its request span.
    assert len({r.trace_id for r in roots}) == 3, roots
    for i, root in enumerate(roots):
        assert root.parent_id == "", root
        assert root.service == "s3gate"
        assert root.kind == 2  # SPAN_KIND_SERVER
        assert root.attr("s3.op") == "PutObject"
        assert root.attr("s3.bucket") == "rec"
        assert root.attr("principal") == alice.principal
        assert root.attr("decision") == "allow"
        assert root.attr("http.response.status_code") == 200
        assert root.attr("http.request.body.size") == 10 + i
        spans = in_trace(trace_of(rx, root, STAGES), root.trace_id)
        for stage in STAGES:
            [s] = [s for s in spans if s.name == stage]
            assert s.parent_id == root.span_id, (stage, s, root)
        assert len([s for s in spans if s.name == "s3 request"]) == 1
    # The backend saw the trace: its request's parent is the forward span,
    # and the recorder verified the gateway's signature with the header on.
    taken = rec.taken()
    assert len(taken) == 3, taken
    for root, got in zip(roots, taken):
        assert got.signed_by == ACCESS_KEY, got.refused
        m = TRACEPARENT.match(got.header("traceparent") or "")
        assert m, got.headers
        assert m.group(1) == root.trace_id
        assert m.group(3) == "01"
        [fwd] = [s for s in rx.spans() if s.trace_id == root.trace_id and s.name == "forward"]
        assert m.group(2) == fwd.span_id
        signed = dict(got.headers)["authorization"]
        assert "traceparent" not in signed.split("SignedHeaders=")[1].split(",")[0]


def test_get_records_bytes_out_and_a_refusal_its_status(traced, rx):
    gw = traced["gw"]
    rec = traced["rec"]
    rec.reset()
    alice = gw.keys["alice"]
    s3 = _client(gw.endpoint, alice.access_key, alice.secret_key)
    r = s3.get_object(Bucket="rec", Key="anything")
    body = r["Body"].read()
    root = request_span(rx, r["ResponseMetadata"]["RequestId"])
    assert root.attr("s3.op") == "GetObject"
    assert root.attr("http.response.body.size") == len(body) > 0
    # Bob may not: the request span says so, and no forward stage ran.
    bob = gw.keys["bob"]
    denied = _client(gw.endpoint, bob.access_key, bob.secret_key)
    with pytest.raises(Exception) as e:
        denied.get_object(Bucket="rec", Key="anything")
    rid = e.value.response["ResponseMetadata"]["RequestId"]
    root = request_span(rx, rid)
    assert root.attr("decision") == "deny"
    assert root.attr("http.response.status_code") == 403
    spans = in_trace(trace_of(rx, root, ("authn", "authz")), root.trace_id)
    assert not [s for s in spans if s.name in ("route", "forward")], spans


def test_client_traceparent_only_from_a_trusted_proxy(traced, rx):
    gw, rec = traced["gw"], traced["rec"]
    client_trace = uuid.uuid4().hex
    client_span = uuid.uuid4().hex[:16]
    tp = {"traceparent": f"00-{client_trace}-{client_span}-01", "tracestate": "vendor=opaque"}
    # From 127.0.0.1, not a trusted proxy: a trace of the gateway's own.
    rec.reset()
    status, headers = signed_send(gw, "PUT", "/rec/untrusted", tp, b"u")
    assert status == 200
    root = request_span(rx, headers["x-amz-request-id"])
    assert root.trace_id != client_trace and root.parent_id == "", root
    [got] = rec.taken()
    assert client_trace not in (got.header("traceparent") or ""), got.headers
    assert got.header("tracestate") is None, got.headers
    # From 127.0.0.2, the trusted proxy: the request span continues it.
    rec.reset()
    status, headers = signed_send(gw, "PUT", "/rec/trusted", tp, b"t", source="127.0.0.2")
    assert status == 200
    root = request_span(rx, headers["x-amz-request-id"])
    assert root.trace_id == client_trace, root
    assert root.parent_id == client_span, root
    [got] = rec.taken()
    m = TRACEPARENT.match(got.header("traceparent") or "")
    assert m and m.group(1) == client_trace, got.headers
    assert got.header("tracestate") == "vendor=opaque", got.headers


def test_no_secret_in_any_span(traced, rx):
    gw = traced["gw"]
    alice = gw.keys["alice"]
    s3 = _client(gw.endpoint, alice.access_key, alice.secret_key)
    s3.put_object(Bucket="rec", Key="secret-check", Body=b"s")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "rec", "Key": "secret-check"}, ExpiresIn=300)
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    root = request_span(rx, r.headers["x-amz-request-id"])
    trace_of(rx, root, STAGES)
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", url).group(1)
    forbidden = {
        "a presigned signature": signature,
        "a presigned credential": "X-Amz-Credential",
        "the backend secret": SECRET_KEY,
        "an authorization header": "AWS4-HMAC-SHA256",
        **{f"{k.principal}'s secret": k.secret_key for k in gw.keys.values()},
    }
    for s in rx.spans():
        text = repr(s.attributes)
        for what, value in forbidden.items():
            assert value not in text, f"{what} in span {s.name}: {s.attributes}"
    # What a span may say is a short list; a new attribute is a decision.
    allowed = {
        "request_id", "http.request.method", "client.address", "s3.op", "s3.bucket", "principal", "identity",
        "decision", "http.response.status_code", "http.request.body.size", "http.response.body.size",
        "rpc.system", "rpc.service", "rpc.method", "server.address",
    }
    for s in rx.spans():
        assert set(s.attributes) <= allowed, (s.name, s.attributes)


def test_ratio_zero_exports_nothing_but_tells_the_backend(backend, tmp_path):
    with OtlpReceiver() as rx, Recorder() as rec:
        gw = launch_gateway(
            tmp_path,
            backend,
            "s3gate-unsampled",
            recorder_config(rec, RULES),
            extra_args=["--otlp-endpoint", rx.endpoint, "--trace-sample-ratio", "0"],
            env=FAST_EXPORT,
        )
        alice = gw.keys["alice"]
        s3 = _client(gw.endpoint, alice.access_key, alice.secret_key)
        for i in range(5):
            s3.put_object(Bucket="rec", Key=f"u/{i}", Body=b"u")
        # SIGTERM exports whatever is queued: after it, nothing can come.
        stop_gateway(gw)
        assert rx.spans() == [], rx.spans()
        for got in rec.taken():
            m = TRACEPARENT.match(got.header("traceparent") or "")
            assert m and m.group(3) == "00", got.headers


def test_spans_queued_at_sigterm_are_exported(backend, tmp_path):
    with OtlpReceiver() as rx, Recorder() as rec:
        gw = launch_gateway(
            tmp_path,
            backend,
            "s3gate-flush",
            recorder_config(rec, RULES),
            extra_args=["--otlp-endpoint", rx.endpoint],
            # Nothing would be sent for a minute but for the shutdown.
            env={"OTEL_BSP_SCHEDULE_DELAY": "60000"},
        )
        alice = gw.keys["alice"]
        s3 = _client(gw.endpoint, alice.access_key, alice.secret_key)
        rid = s3.put_object(Bucket="rec", Key="flush", Body=b"f")["ResponseMetadata"]["RequestId"]
        assert rx.spans() == []
        stop_gateway(gw)
        assert [s for s in rx.spans() if s.attr("request_id") == rid], rx.spans()


def test_without_an_endpoint_the_backend_gets_no_trace_context(backend, tmp_path):
    with Recorder() as rec:
        gw = launch_gateway(tmp_path, backend, "s3gate-untraced", recorder_config(rec, RULES))
        client_tp = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        status, _ = signed_send(gw, "PUT", "/rec/plain", {"traceparent": client_tp}, b"p")
        stop_gateway(gw)
        assert status == 200
        [got] = rec.taken()
        assert got.header("traceparent") is None, got.headers


def test_control_plane_spans_are_children_of_the_data_plane_calls(backend, tmp_path, rx):
    keys = make_keys()
    config = tmp_path / "cluster.toml"
    config.write_text(render_config(backend, keys, unused_port()))
    env = {**gateway_env(backend, keys, "info"), **FAST_EXPORT}
    # The control plane through the flag's environment twin, the data plane through the flag.
    cp, cp_addr = start_controlplane(gateway_bin(), "cp", config=config, env={**env, "S3GATE_OTLP_ENDPOINT": rx.endpoint},
                                     **node_files(tmp_path, "cp"))  # fmt: skip
    dp, dp_addr = start_dataplane(
        gateway_bin(), "dp", control_planes=[f"http://{cp_addr}"], region=REGION, env=env,
        extra_args=["--otlp-endpoint", rx.endpoint], **node_files(tmp_path, "dp"),
    )  # fmt: skip
    try:
        alice = keys["alice"]
        s3 = _client(f"http://{dp_addr}", alice.access_key, alice.secret_key)
        rid = s3.put_object(Bucket="data", Key=f"cp/{uuid.uuid4().hex}", Body=b"c")["ResponseMetadata"]["RequestId"]
        root = request_span(rx, rid)
        assert root.service == "s3gate-dataplane" and root.parent_id == "", root
        spans = in_trace(trace_of(rx, root, (*STAGES, "control plane call")), root.trace_id)
        by_id = {s.span_id: s for s in spans}
        calls = [s for s in spans if s.name == "control plane call"]
        # A cold data plane asks for the signing key, the decision and the route.
        methods = {c.attr("rpc.method") for c in calls}
        assert {"SigningKey", "Authorize", "GetRoute"} <= methods, methods
        for call in calls:
            assert call.service == "s3gate-dataplane"
            assert call.kind == 3  # SPAN_KIND_CLIENT
            parent = by_id[call.parent_id]
            assert parent.name in ("authn", "authz", "route"), parent
            assert by_id[parent.parent_id] is root
        expect = {"SigningKey": "authn", "Authorize": "authz", "GetRoute": "route"}
        for call in calls:
            if call.attr("rpc.method") in expect:
                assert by_id[call.parent_id].name == expect[call.attr("rpc.method")], call
        # Each call's server side, in the control plane, is its child.
        def served_of(ss):
            return [s for s in ss if s.trace_id == root.trace_id and s.service == "s3gate-controlplane"]

        served = served_of(rx.wait_for(lambda ss: len(served_of(ss)) >= len(calls), "a server span per call"))
        assert len(served) == len(calls), (served, calls)
        for s in served:
            assert s.kind == 2
            call = by_id[s.parent_id]
            assert call.name == "control plane call"
            assert s.name == s.attr("rpc.method") == f"s3gate.v1.Decisions/{call.attr('rpc.method')}"
        # The Watch stream and health probes make no traces.
        assert not [s for s in rx.spans() if s.service == "s3gate-controlplane" and s.parent_id == ""]
    finally:
        dp.stop()
        cp.stop()


def test_an_unrecorded_request_tells_the_control_plane_not_to_record(backend, tmp_path):
    """A data plane at ratio 0 makes no span for its requests, yet its
    control-plane calls carry the request's trace as unsampled: a control
    plane recording every new trace (ratio 1) records none of them, and
    sees the same trace id the backend is given."""
    keys = make_keys()
    config = tmp_path / "cluster.toml"
    config.write_text(render_config(backend, keys, unused_port()))
    env = {**gateway_env(backend, keys, "info"), **FAST_EXPORT}
    with OtlpReceiver() as rx:
        cp, cp_addr = start_controlplane(gateway_bin(), "cp0", config=config, env={**env, "S3GATE_OTLP_ENDPOINT": rx.endpoint},
                                         **node_files(tmp_path, "cp0"))  # fmt: skip
        try:
            dp, dp_addr = start_dataplane(
                gateway_bin(), "dp0", control_planes=[f"http://{cp_addr}"], region=REGION, env=env,
                extra_args=["--otlp-endpoint", rx.endpoint, "--trace-sample-ratio", "0"], **node_files(tmp_path, "dp0"),
            )  # fmt: skip
            try:
                alice = keys["alice"]
                s3 = _client(f"http://{dp_addr}", alice.access_key, alice.secret_key)
                # Cold: each asks the control plane for the key, the decision and the route.
                for i in range(3):
                    s3.put_object(Bucket="data", Key=f"u0/{uuid.uuid4().hex}/{i}", Body=b"u")
            finally:
                dp.stop()
        finally:
            # SIGTERM exports whatever is queued: after it, nothing can come.
            cp.stop()
        assert rx.spans() == [], rx.spans()
