"""CORS, answered by s3gate from each bucket's `[[buckets.cors]]` rules, as a
browser meets it: the preflight (`OPTIONS`, no credentials) and the actual
request carrying `Origin`, sent with `requests` exactly as a browser would
send them (`browser_fetch` does both steps and checks what a browser checks).

Buckets of the module's gateway (on top of conftest's):
- `web` (backend bucket `other` on s3s-fs): rule 0 for https://app.example.com
  and https://*.example.org, every method, headers content-type and
  x-amz-*, max age 600; rule 1 for any origin, GET and HEAD only;
- `webdead`: the same rules on the backend that is not running;
- `rec` on a recording upstream that answers with CORS headers of its own;
- `data` (conftest's): no CORS at all.

Also: CORS rules put with `s3gate admin buckets put --cors-file` reach
preflights within a second, in `serve` and through a control plane and a
data plane over gRPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
import requests

from conftest import (
    REGION,
    _client,
    gateway_bin,
    gateway_env,
    make_keys,
    node_files,
    render_config,
    rules_config,
    stop_gateway,
    unused_port,
)
from harness.cluster import start_controlplane, start_dataplane
from harness.config import toml_table
from harness.procs import ready_field
from recorder import ACCESS_KEY, BACKEND_BUCKET, SECRET_KEY, Recorder, Reply, access_log_line, launch_gateway

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
TOKEN = "admin-" + uuid.uuid4().hex

EXPOSED = "ETag, x-amz-request-id"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
ALL_METHODS = ["GET", "PUT", "HEAD", "POST", "DELETE"]

WEB_CORS = [
    dict(allowed_origins=[APP, "https://*.example.org"], allowed_methods=ALL_METHODS,
         allowed_headers=["content-type", "x-amz-*"], expose_headers=["ETag", "x-amz-request-id"], max_age=600),
    dict(allowed_origins=["*"], allowed_methods=["GET", "HEAD"], expose_headers=["ETag"]),
]  # fmt: skip

EXTRA_RULES = [
    ("allow", ["alice"], ["s3:*"], ["web", "web/*", "webdead", "webdead/*", "rec", "rec/*"]),
    ("deny", ["alice"], ["s3:*"], ["web/denied/*"]),
]


def bucket_config(name: str, backend: str, backend_bucket: str, cors: list[dict]) -> str:
    lines = toml_table("buckets", dict(name=name, backend=backend, backend_bucket=backend_bucket))
    for rule in cors:
        lines += toml_table("buckets.cors", rule)
    return "\n".join(lines) + "\n"


def recorder_backend(rec: Recorder) -> str:
    return "\n".join(toml_table("backends", dict(name="rec", endpoint=rec.endpoint, region=REGION,
                                                 addressing_style="path", access_key=ACCESS_KEY,
                                                 secret_key=SECRET_KEY))) + "\n"  # fmt: skip


# --------------------------------------------------------------------------- helpers


def preflight(endpoint: str, path: str, origin: str | None, method: str | None, headers: str | None = None,
              extra: dict[str, str] | None = None) -> requests.Response:  # fmt: skip
    """An OPTIONS preflight as a browser sends it: no credentials."""
    h = {}
    if origin is not None:
        h["Origin"] = origin
    if method is not None:
        h["Access-Control-Request-Method"] = method
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    h.update(extra or {})
    return requests.options(endpoint + path, headers=h, timeout=30)


# Request headers a browser sends without asking first (the Fetch standard's
# CORS-safelisted request headers, simplified: content-type is asked for).
SAFELISTED = {"accept", "accept-language", "content-language"}


def browser_fetch(method: str, url: str, origin: str, *, headers: dict[str, str] | None = None,
                  data: bytes | None = None) -> requests.Response:  # fmt: skip
    """What a page at `origin` doing `fetch(url, {method, headers, body})`
    makes a browser send, and what it checks before the page sees anything:

    1. the preflight (skipped for a simple GET/HEAD without extra headers):
       OPTIONS with Access-Control-Request-Method/-Headers, which must be
       allowed for this origin, method and every header;
    2. the request itself, with `Origin`, whose response must allow the
       origin too.

    Returns the actual response (its status may be an error: the page sees
    it as long as the CORS headers allow the origin). Reusable for any
    credential a page holds: a presigned URL (no headers), or
    `headers={"Authorization": "Bearer <jwt>"}` once JWT bearer exists.
    """
    headers = dict(headers or {})
    asked = sorted(h.lower() for h in headers if h.lower() not in SAFELISTED)
    if method not in ("GET", "HEAD", "POST") or asked:
        pre = preflight(_origin_of(url), _path_of(url), origin, method, ", ".join(asked) or None)
        assert pre.status_code == 200, f"preflight refused: {pre.status_code} {pre.text}"
        assert pre.headers.get("access-control-allow-origin") in (origin, "*"), pre.headers
        allowed = [m.strip() for m in pre.headers["access-control-allow-methods"].split(",")]
        assert method in allowed, pre.headers
        if asked:
            granted = [h.strip() for h in pre.headers["access-control-allow-headers"].split(",")]
            assert set(asked) <= set(granted), pre.headers
    r = requests.request(method, url, headers={**headers, "Origin": origin}, data=data, timeout=60)
    allow = r.headers.get("access-control-allow-origin")
    assert allow in (origin, "*"), f"a browser would withhold this response from the page: {r.headers}"
    return r


def _origin_of(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _path_of(url: str) -> str:
    rest = url.split("://", 1)[1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


def s3_error(r: requests.Response) -> tuple[str, str]:
    root = ET.fromstring(r.content)
    return root.findtext("Code"), root.findtext("Message")


def no_cors(r: requests.Response) -> bool:
    return not any(k.lower().startswith("access-control-") for k in r.headers)


def admin(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "S3GATE_CONTROL_PLANE": url, "S3GATE_ADMIN_TOKEN": TOKEN}
    return subprocess.run([str(gateway_bin()), "admin", *args], capture_output=True, text=True, env=env,
                          timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip


def eventually(check, what: str, timeout: float = 1.0):
    """`check()` until it returns something true, for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def recorder():
    with Recorder() as r:
        yield r


@pytest.fixture(scope="module")
def gw(backend, recorder, tmp_path_factory):
    extra = (
        bucket_config("web", "local", "other", WEB_CORS)
        + bucket_config("webdead", "dead", "dead", WEB_CORS)
        + recorder_backend(recorder)
        + bucket_config("rec", "rec", BACKEND_BUCKET, [dict(allowed_origins=[APP], allowed_methods=["GET"],
                                                              expose_headers=["ETag"])])  # fmt: skip
        + rules_config(EXTRA_RULES)
    )
    g = launch_gateway(tmp_path_factory.mktemp("cors"), backend, "s3gate-cors", extra_config=extra,
                       extra_args=["--grpc-listen", "127.0.0.1:0"], env={"S3GATE_ADMIN_TOKEN": TOKEN})  # fmt: skip
    yield g
    stop_gateway(g)


@pytest.fixture
def rec(recorder):
    recorder.reset()
    return recorder


@pytest.fixture(scope="module")
def alice(gw):
    k = gw.keys["alice"]
    return _client(gw.endpoint, k.access_key, k.secret_key)


def key() -> str:
    return f"cors/{uuid.uuid4().hex}.txt"


# --------------------------------------------------------------------------- preflight


def test_preflight_from_an_allowed_origin_gets_the_rule(gw):
    r = preflight(gw.endpoint, "/web/some/key.txt", APP, "PUT", "Content-Type, X-Amz-Meta-Owner")
    assert r.status_code == 200, r.text
    assert r.content == b""
    h = r.headers
    assert h["access-control-allow-origin"] == APP
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-allow-methods"] == "GET, PUT, HEAD, POST, DELETE"
    assert h["access-control-allow-headers"] == "content-type, x-amz-meta-owner"
    assert h["access-control-max-age"] == "600"
    assert h["access-control-expose-headers"] == EXPOSED
    assert h["vary"] == PREFLIGHT_VARY
    # answered by the gateway, named in its access log as a preflight
    line = access_log_line(gw, h["x-amz-request-id"])
    assert "PreflightRequest" in line and "web" in line and "cors-allow" in line, line
    # any path of the bucket, the bucket itself and virtual-host style alike
    for path, extra in [("/web", {}), ("/web/?uploads", {}), ("/", {"Host": f"web.s3.localhost:{gw.port}"})]:
        r = preflight(gw.endpoint, path, APP, "POST", extra=extra)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP, (path, r.text)
        assert "access-control-allow-headers" not in r.headers


def test_preflight_wildcard_origins(gw):
    # one * inside an origin: any subdomain, nothing else
    r = preflight(gw.endpoint, "/web/k", "https://team.example.org", "DELETE")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://team.example.org"
    for origin in ["http://team.example.org", "https://example.org", "https://team.example.org.evil.net"]:
        r = preflight(gw.endpoint, "/web/k", origin, "DELETE")
        assert r.status_code == 403, (origin, r.text)
    # "*": any origin, answered with * and without credentials, as S3 does
    r = preflight(gw.endpoint, "/web/k", OTHER, "GET")
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    assert r.headers["access-control-allow-methods"] == "GET, HEAD"
    assert r.headers["access-control-expose-headers"] == "ETag"
    assert "access-control-max-age" not in r.headers


def test_preflight_refused_origin_method_or_header(gw):
    cases = [
        (OTHER, "PUT", None),  # the * rule allows GET and HEAD only
        (APP, "PATCH", None),  # not a method a rule can allow
        (APP, "get", None),  # methods are case-sensitive
        (APP, "PUT", "content-type, authorization"),  # authorization is not allowed
        (OTHER, "GET", "x-amz-meta-a"),  # the * rule allows no header
    ]
    for origin, method, headers in cases:
        r = preflight(gw.endpoint, "/web/k", origin, method, headers)
        assert r.status_code == 403, (origin, method, headers, r.text)
        assert s3_error(r) == ("AccessForbidden", "CORSResponse: This CORS request is not allowed."), r.text
        assert no_cors(r), r.headers


def test_preflight_without_cors_unknown_bucket_and_malformed(gw):
    r = preflight(gw.endpoint, "/data/k", APP, "GET")
    assert r.status_code == 403
    assert s3_error(r) == ("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket."), r.text
    assert no_cors(r)
    r = preflight(gw.endpoint, "/no-such-bucket/k", APP, "GET")
    assert r.status_code == 404 and s3_error(r)[0] == "NoSuchBucket", r.text
    r = preflight(gw.endpoint, "/web/k", None, "GET")
    assert r.status_code == 400 and s3_error(r)[0] == "BadRequest", r.text
    r = preflight(gw.endpoint, "/web/k", APP, None)
    assert r.status_code == 400 and s3_error(r)[0] == "BadRequest", r.text
    # no bucket (the ListBuckets endpoint): refused, not treated as a bucket
    r = preflight(gw.endpoint, "/", APP, "GET")
    assert r.status_code == 405 and s3_error(r)[0] == "MethodNotAllowed", r.text
    assert no_cors(r)


def test_preflight_is_answered_without_credentials_or_backend(gw, rec):
    # The backend of webdead is not running: the preflight does not need it.
    r = preflight(gw.endpoint, "/webdead/k", APP, "PUT", "content-type")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP, r.text
    # Credentials on an OPTIONS are neither checked nor needed (a garbage
    # signature does not turn it into an error), and nothing is forwarded.
    r = preflight(gw.endpoint, "/rec/k", APP, "GET",
                  extra={"Authorization": "AWS4-HMAC-SHA256 Credential=NOPE/20200101/us-east-1/s3/aws4_request, "
                                          "SignedHeaders=host, Signature=00"})  # fmt: skip
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP, r.text
    r = preflight(gw.endpoint, "/rec/k", OTHER, "GET")
    assert r.status_code == 403
    assert rec.taken() == [], "a preflight reached the backend"
    line = access_log_line(gw, r.headers["x-amz-request-id"])
    assert "cors-deny" in line and ('principal="-"' in line or "principal=-" in line), line


def test_a_request_that_looks_like_a_preflight_is_still_authenticated(gw):
    # A GET carrying the preflight headers is a GET: anonymous is refused ...
    h = {"Origin": APP, "Access-Control-Request-Method": "GET"}
    r = requests.get(f"{gw.endpoint}/web/k", headers=h, timeout=30)
    assert r.status_code == 403 and s3_error(r)[0] == "AccessDenied", r.text
    # ... and a forged signature is a signature error; both answers still
    # carry the CORS headers, so the page can read the error.
    forged = {**h, "Authorization": f"AWS4-HMAC-SHA256 Credential={gw.keys['alice'].access_key}/20200101/{REGION}"
                                    "/s3/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
              "x-amz-date": "20200101T000000Z", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}  # fmt: skip
    r = requests.get(f"{gw.endpoint}/web/k", headers=forged, timeout=30)
    assert r.status_code == 403 and s3_error(r)[0] in ("SignatureDoesNotMatch", "RequestTimeTooSkewed"), r.text
    assert r.headers["access-control-allow-origin"] == APP


# --------------------------------------------------------------------------- actual requests


def test_presigned_put_and_get_from_a_page(gw, alice):
    k, body = key(), b"uploaded by a web page"
    put_url = alice.generate_presigned_url("put_object", Params={"Bucket": "web", "Key": k}, ExpiresIn=300)
    r = browser_fetch("PUT", put_url, APP, data=body)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == EXPOSED
    assert r.headers["vary"].split(",")[-1].strip() == "Origin"
    assert r.headers["etag"]  # exposed, so the page can read it
    assert (gw.backend.root / "other" / k).read_bytes() == body

    get_url = alice.generate_presigned_url("get_object", Params={"Bucket": "web", "Key": k}, ExpiresIn=300)
    r = browser_fetch("GET", get_url, APP)
    assert r.status_code == 200 and r.content == body
    assert r.headers["access-control-expose-headers"] == EXPOSED
    # from another origin, the * rule answers: GET yes, with * ...
    r = browser_fetch("GET", get_url, OTHER)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    # ... and the same request without Origin carries no CORS header at all
    r = requests.get(get_url, timeout=30)
    assert r.status_code == 200 and no_cors(r), r.headers


def test_signed_request_with_origin(gw, alice):
    # A page using an SDK signs with SigV4 headers; Origin is not signed.
    k = key()
    alice.put_object(Bucket="web", Key=k, Body=b"x")
    seen = {}

    def add_origin(request, **_):
        request.headers["Origin"] = APP

    def keep(http_response, **_):
        seen.update({k.lower(): v for k, v in http_response.headers.items()})

    alice.meta.events.register("before-send.s3.HeadObject", add_origin)
    alice.meta.events.register("after-call.s3.HeadObject", keep)
    try:
        alice.head_object(Bucket="web", Key=k)
    finally:
        alice.meta.events.unregister("before-send.s3.HeadObject", add_origin)
        alice.meta.events.unregister("after-call.s3.HeadObject", keep)
    assert seen.get("access-control-allow-origin") == APP, seen


def test_errors_carry_cors_headers(gw, alice):
    # denied by a rule: the page gets a readable 403
    url = alice.generate_presigned_url("get_object", Params={"Bucket": "web", "Key": "denied/x"}, ExpiresIn=300)
    r = browser_fetch("GET", url, APP)
    assert r.status_code == 403 and s3_error(r)[0] == "AccessDenied", r.text
    assert r.headers["access-control-expose-headers"] == EXPOSED
    # a backend error (NoSuchKey from s3s-fs) too
    url = alice.generate_presigned_url("get_object", Params={"Bucket": "web", "Key": key()}, ExpiresIn=300)
    r = browser_fetch("GET", url, APP)
    assert r.status_code == 404 and s3_error(r)[0] == "NoSuchKey", r.text
    # an origin no rule allows for the method: served, but without CORS
    # headers, so a browser withholds it from the page (as S3 does)
    url = alice.generate_presigned_url("put_object", Params={"Bucket": "web", "Key": key()}, ExpiresIn=300)
    r = requests.put(url, data=b"y", headers={"Origin": OTHER}, timeout=30)
    assert r.status_code == 200 and no_cors(r), r.headers
    # a bucket without CORS: the same
    url = alice.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": key()}, ExpiresIn=300)
    r = requests.get(url, headers={"Origin": APP}, timeout=30)
    assert no_cors(r), r.headers


def test_backend_cors_headers_never_leak(gw, alice, rec):
    rec.reply = Reply(status=200, body=b"backend body", headers={
        "content-type": "text/plain", "etag": '"abc"',
        "access-control-allow-origin": "https://backend-chosen.example", "access-control-allow-credentials": "true",
        "access-control-expose-headers": "x-backend-secret", "access-control-allow-methods": "PATCH",
        "access-control-max-age": "99999",
    })  # fmt: skip
    url = alice.generate_presigned_url("get_object", Params={"Bucket": "rec", "Key": "k"}, ExpiresIn=300)
    r = browser_fetch("GET", url, APP)
    assert r.status_code == 200 and r.content == b"backend body"
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-expose-headers"] == "ETag"
    assert r.headers["access-control-allow-methods"] == "GET"
    assert "access-control-max-age" not in r.headers
    # without Origin, none of the backend's either
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and no_cors(r), r.headers
    # and the browser's CORS headers were not forwarded
    taken = rec.taken()
    assert len(taken) == 2
    assert all(t.header("origin") is None for t in taken), taken[0].headers


# --------------------------------------------------------------------------- changes through the Admin API


def grpc_url(gw) -> str:
    return "http://" + json.loads(gw.ready_file.read_text())["grpc"]


def test_admin_puts_cors_and_preflights_see_it_at_once(gw, tmp_path):
    url = grpc_url(gw)
    assert preflight(gw.endpoint, "/public/k", APP, "GET").status_code == 403
    rules = tmp_path / "cors.json"
    rules.write_text(json.dumps({"CORSRules": [{"ID": "app", "AllowedOrigins": [APP], "AllowedMethods": ["GET"],
                                                "MaxAgeSeconds": 30}]}))  # fmt: skip
    r = admin(url, "buckets", "put", "--name", "public", "--backend", "local", "--cors-file", str(rules))
    assert r.returncode == 0, r.stderr
    r = eventually(lambda: (p := preflight(gw.endpoint, "/public/k", APP, "GET")).status_code == 200 and p,
                   "the new CORS rule answers preflights")  # fmt: skip
    assert r.headers["access-control-max-age"] == "30"
    listed = json.loads(admin(url, "--json", "buckets", "list").stdout)
    public = next(b for b in listed if b["name"] == "public")
    assert public["cors"] == [{"allowed_origins": [APP], "allowed_methods": ["GET"], "allowed_headers": [],
                               "expose_headers": [], "max_age": 30}]  # fmt: skip
    table = admin(url, "buckets", "list").stdout
    assert f"{APP} GET" in table, table
    # a rule the control plane refuses, with the reason
    rules.write_text(json.dumps([{"allowed_origins": ["*"], "allowed_methods": ["PATCH"]}]))
    r = admin(url, "buckets", "put", "--name", "public", "--backend", "local", "--cors-file", str(rules))
    assert r.returncode == 1 and 'cors[0]: unknown method "PATCH"' in r.stderr, r.stderr
    # put again without rules: CORS is off again
    r = admin(url, "buckets", "put", "--name", "public", "--backend", "local")
    assert r.returncode == 0, r.stderr
    eventually(lambda: preflight(gw.endpoint, "/public/k", APP, "GET").status_code == 403, "CORS turned off")


# --------------------------------------------------------------------------- distributed


def test_distributed_route_carries_cors(backend, tmp_path):
    """A control plane and a data plane over gRPC: the rules travel on the
    route, and an Admin change reaches the data plane's preflights within a
    second (the route's invalidation)."""
    keys = make_keys()
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(render_config(backend, keys, unused_port()) + bucket_config("web", "local", "other", WEB_CORS)
                   + rules_config(EXTRA_RULES))  # fmt: skip
    env = gateway_env(backend, keys, "debug", S3GATE_ADMIN_TOKEN=TOKEN)
    cp, cp_addr = start_controlplane(gateway_bin(), "cors-cp", config=cfg, env=env, **node_files(tmp_path, "cors-cp"))
    dp, dp_addr = start_dataplane(gateway_bin(), "cors-dp", control_planes=[f"http://{cp_addr}"], region=REGION,
                                  env=env, **node_files(tmp_path, "cors-dp"))  # fmt: skip
    try:
        endpoint = f"http://{dp_addr}"
        r = preflight(endpoint, "/web/k", "https://x.example.org", "PUT", "x-amz-meta-a")
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "https://x.example.org"
        assert r.headers["access-control-max-age"] == "600"
        assert preflight(endpoint, "/data/k", APP, "GET").status_code == 403

        k = keys["alice"]
        alice = _client(endpoint, k.access_key, k.secret_key)
        url = alice.generate_presigned_url("put_object", Params={"Bucket": "web", "Key": key()}, ExpiresIn=300)
        r = browser_fetch("PUT", url, APP, data=b"through the data plane")
        assert r.status_code == 200 and r.headers["access-control-expose-headers"] == EXPOSED

        rules = tmp_path / "cors.json"
        rules.write_text(json.dumps([{"allowed_origins": [OTHER], "allowed_methods": ["PUT"], "max_age": 5}]))
        r = admin(f"http://{cp_addr}", "buckets", "put", "--name", "web", "--backend", "local",
                  "--backend-bucket", "other", "--cors-file", str(rules))  # fmt: skip
        assert r.returncode == 0, r.stderr
        eventually(lambda: preflight(endpoint, "/web/k", OTHER, "PUT").status_code == 200,
                   "the data plane sees the new rules")  # fmt: skip
        assert preflight(endpoint, "/web/k", APP, "PUT").status_code == 403
    finally:
        dp.stop()
        cp.stop()
