"""JWT bearer tokens (`Authorization: Bearer <jwt>`) from a real OpenID Connect
provider: oauth2-mock-server on 127.0.0.1 (tests/idp), whose discovery document
and JWKS s3gate fetches over http, and whose keys sign the tokens.

Covers: GET/PUT/list/delete with curl and requests; rules on the token's
groups; every refusal with its S3 error (expired, not yet valid, issued in the
future, wrong aud, wrong iss, unknown kid, another key under a known kid,
alg none, HS256 keyed with the IdP's public key, tampered payload, malformed,
bearer plus query signature, signed streaming payload); key rotation without
a restart; a removed key refused once s3gate has refetched; a flood of
unknown kids costing at most the rate-limited JWKS fetches (counted at the
IdP); an unreachable IdP failing closed (503) and recovering; the distributed
mode (data plane caches a verified token until exp, the control plane alone
holds keys; ExpiredToken crosses gRPC); and no token in any s3gate log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import time
import uuid

import pytest
import requests

from conftest import (
    Gateway, Proc, gateway_bin, gateway_env, make_keys, node_files, read_ready_file, render_config, rules_config,
    stop_gateway, unused_port, wait_for, REGION,
)  # fmt: skip
from harness.cluster import start_controlplane, start_dataplane
from harness.config import toml_table
from harness.idp import Idp, IdpCa

# s3gate refetches a provider's JWKS at most once per this many seconds.
MIN_REFETCH = 10

# Every token handed to s3gate here: none may appear in its logs.
ISSUED: list[str] = []

RULES = [
    ("allow", ["group:writers"], ["s3:*"], ["data", "data/jwt/*", "web/jwt/*"]),
    ("allow", ["group:readers"], ["s3:GetObject", "s3:ListBucket"], ["data", "data/jwt/*"]),
]


def oidc_config(issuer: str, ca_bundle=None) -> str:
    fields = dict(name="corp", issuer=issuer, audiences=["s3gate"], groups_claim="groups",
                  ca_bundle=str(ca_bundle) if ca_bundle else None)  # fmt: skip
    return "\n".join(toml_table("oidc", fields)) + "\n"


# A web app's origin, allowed by the CORS rules of bucket "web" (the
# backend's data-prod, as "data" is).
WEB_APP = "https://app.example.com"


def web_bucket_config() -> str:
    out = toml_table("buckets", dict(name="web", backend="local", backend_bucket="data-prod"))
    out += toml_table("buckets.cors", dict(allowed_origins=[WEB_APP], allowed_methods=["GET", "PUT"],
                                           allowed_headers=["authorization", "content-type"], expose_headers=["ETag"],
                                           max_age=600))  # fmt: skip
    return "\n".join(out) + "\n"


def bearer_config(backend, keys, issuer: str, ca_bundle=None) -> str:
    return (render_config(backend, keys, unused_port()) + rules_config(RULES) + oidc_config(issuer, ca_bundle)
            + web_bucket_config())  # fmt: skip


def start_bearer_gateway(tmp, backend, issuer: str, name: str, ca_bundle=None) -> Gateway:
    keys = make_keys()
    cfg = tmp / f"{name}.toml"
    cfg.write_text(bearer_config(backend, keys, issuer, ca_bundle))
    ready, log = tmp / f"{name}.ready.json", tmp / f"{name}.log"
    # trace: the check that no token is logged covers every level
    env = gateway_env(backend, keys, "trace")
    argv = [str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0", "--ready-file", str(ready)]
    proc = Proc(name, argv, log, env)
    info = wait_for(lambda: read_ready_file(ready), f"{name} ready file", proc)
    host, port = info["s3"].rsplit(":", 1)
    return Gateway(proc, (host, int(port)), cfg, log, ready, keys, backend)


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    i = Idp(tmp_path_factory.mktemp("idp")).start()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def foreign_idp(tmp_path_factory):
    """Another IdP: its keys are not the configured provider's."""
    i = Idp(tmp_path_factory.mktemp("idp2"), name="idp2").start()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, backend, idp):
    g = start_bearer_gateway(tmp_path_factory.mktemp("bearer"), backend, idp.issuer, "s3gate-bearer")
    yield g
    stop_gateway(g)
    assert_no_token_in(g.log_path)


def mint(idp: Idp, sub: str = "walt", groups=("writers",), **kw) -> str:
    """A token of `idp`; each one differs (jti), so none is answered from a
    cache that another filled."""
    claims = {"aud": "s3gate", "sub": sub, "groups": list(groups), "jti": uuid.uuid4().hex, **kw.pop("claims", {})}
    t = idp.token(claims, **kw)
    ISSUED.append(t)
    return t


def call(gw: Gateway, method: str, path: str, token: str | None, *, headers=None, data=None) -> requests.Response:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
        if token not in ISSUED:
            ISSUED.append(token)
    return requests.request(method, gw.endpoint + path, headers=h, data=data, timeout=30)


def code(r: requests.Response) -> str | None:
    m = re.search(r"<Code>([^<]+)</Code>", r.text)
    return m.group(1) if m else None


def refused(r: requests.Response, status: int, s3_code: str) -> None:
    assert (r.status_code, code(r)) == (status, s3_code), f"{r.status_code} {r.text[:300]}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def until(pred, timeout: float, what: str):
    """Polls `pred` (once a second) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(1)


def assert_no_token_in(path) -> None:
    text = path.read_text(errors="replace")
    for t in ISSUED:
        sig = t.rsplit(".", 1)[-1]
        # The malformed ones ("abc", "a.b") turn up in any log by chance,
        # inside the random hex of an object key: too short to tell a leak.
        if len(t) >= 16:
            assert t not in text, f"a token leaked into {path}"
        if len(sig) >= 16:
            assert sig not in text, f"a token signature leaked into {path}"


def obj() -> str:
    return f"jwt/{uuid.uuid4().hex}.txt"


# --------------------------------------------------------------------------- use


def test_put_get_list_delete_with_curl_and_requests(gw, idp, backend):
    token = mint(idp)
    key = obj()
    r = call(gw, "PUT", f"/data/{key}", token, data=b"hello from a jwt")
    assert r.status_code == 200, r.text
    assert backend.file("data-prod", key).read_bytes() == b"hello from a jwt"

    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {token}", f"{gw.endpoint}/data/{key}"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout == b"hello from a jwt", out

    r = call(gw, "GET", "/data?list-type=2&prefix=jwt/", token)
    assert r.status_code == 200 and f"<Key>{key}</Key>" in r.text, r.text
    r = call(gw, "GET", "/", token)
    assert r.status_code == 200 and "<Name>data</Name>" in r.text, r.text
    # a hex payload digest is still checked against the body
    digest = hashlib.sha256(b"checked").hexdigest()
    r = call(gw, "PUT", f"/data/{key}", token, data=b"checkeX", headers={"x-amz-content-sha256": digest})
    refused(r, 400, "XAmzContentSHA256Mismatch")
    r = call(gw, "PUT", f"/data/{key}", token, data=b"checked", headers={"x-amz-content-sha256": digest})
    assert r.status_code == 200, r.text
    assert call(gw, "DELETE", f"/data/{key}", token).status_code == 204
    assert not backend.exists("data-prod", key)

    # the access log names the principal and the identity source
    def logged():
        return re.search(r's3gate::access.*principal="walt" identity="jwt" op="DeleteObject"', gw.log_path.read_text())

    wait_for(logged, "the access log line", gw.proc, timeout=5)


def test_rules_on_the_tokens_groups_apply(gw, idp, backend):
    key = obj()
    backend.put("data-prod", key, b"for readers")
    readers = mint(idp, sub="rita", groups=["readers"])
    r = call(gw, "GET", f"/data/{key}", readers)
    assert (r.status_code, r.content) == (200, b"for readers")
    refused(call(gw, "PUT", f"/data/{key}", readers, data=b"x"), 403, "AccessDenied")
    # one group as a plain string
    assert call(gw, "GET", f"/data/{key}", mint(idp, sub="rita", claims={"groups": "readers"})).status_code == 200
    # another group, or none
    refused(call(gw, "GET", f"/data/{key}", mint(idp, sub="olga", groups=["others"])), 403, "AccessDenied")
    refused(call(gw, "GET", f"/data/{key}", mint(idp, sub="nora", drop=["groups"])), 403, "AccessDenied")
    # the principal claim (sub) is the principal rules name: bob may read data/reports/*
    backend.put("data-prod", "reports/q1.csv", b"q1")
    bob = mint(idp, sub="bob", groups=[])
    assert call(gw, "GET", "/data/reports/q1.csv", bob).content == b"q1"
    refused(call(gw, "GET", f"/data/{key}", bob), 403, "AccessDenied")


# --------------------------------------------------------------------------- refusals


def forged_hs256(secret: bytes, claims: dict, kid: str = "k1") -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def der_int(value: bytes) -> bytes:
    return der(0x02, b"\x00" + value if value[0] & 0x80 else value)


def rsa_public_pem(jwk: dict) -> bytes:
    """The PEM an attacker builds from the published JWK (SubjectPublicKeyInfo)."""
    rsa_key = der(0x30, der_int(unb64(jwk["n"])) + der_int(unb64(jwk["e"])))
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a864886f70d010101")) + der(0x05, b""))
    spki = der(0x30, algorithm + der(0x03, b"\x00" + rsa_key))
    lines = [base64.b64encode(spki)[i : i + 64] for i in range(0, len(base64.b64encode(spki)), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def test_bad_tokens_are_refused_with_the_right_error(gw, idp, foreign_idp, backend):
    key = obj()
    backend.put("data-prod", key, b"x")
    path = f"/data/{key}"
    now = int(time.time())

    def get(token):
        return call(gw, "GET", path, token)

    refused(get(mint(idp, expires_in=-600)), 400, "ExpiredToken")
    refused(get(mint(idp, claims={"nbf": now + 600})), 400, "InvalidToken")
    refused(get(mint(idp, claims={"iat": now + 600})), 400, "InvalidToken")
    refused(get(mint(idp, claims={"aud": "someone-else"})), 400, "InvalidToken")
    refused(get(mint(idp, claims={"aud": ["a", "b"]})), 400, "InvalidToken")
    refused(get(mint(idp, drop=["aud"])), 400, "InvalidToken")
    refused(get(mint(idp, claims={"iss": "http://127.0.0.1:9"})), 400, "InvalidToken")
    refused(get(mint(idp, drop=["exp"])), 400, "InvalidToken")
    # within the 60 s leeway, a just-expired token still works
    assert get(mint(idp, expires_in=-20)).status_code == 200

    good = mint(idp)
    head, payload, sig = good.split(".")
    claims = json.loads(unb64(payload))
    # a key the IdP never published, under an unknown kid and under its own kid
    refused(get(foreign_idp.token({**claims, "iss": idp.issuer}, kid="k1", header={"kid": "ghost"})), 400, "InvalidToken")
    refused(get(foreign_idp.token({**claims, "iss": idp.issuer}, kid="k1")), 400, "InvalidToken")
    # alg none, with and without a signature
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    refused(get(f"{none_head}.{payload}."), 400, "InvalidToken")
    refused(get(f"{none_head}.{payload}.{sig}"), 400, "InvalidToken")
    # HS256 keyed with what anyone can read from the JWKS
    jwk = next(k for k in idp.jwks()["keys"] if k["kid"] == "k1")
    for secret in [rsa_public_pem(jwk), json.dumps(jwk).encode(), unb64(jwk["n"])]:
        refused(get(forged_hs256(secret, claims)), 400, "InvalidToken")
    # tampered payload: another principal and group, the IdP's signature
    tampered = b64(json.dumps({**claims, "sub": "admin", "groups": ["writers", "admins"]}).encode())
    refused(get(f"{head}.{tampered}.{sig}"), 400, "InvalidToken")
    # another header under the same signature
    other_head = b64(json.dumps({"alg": "RS384", "kid": "k1"}).encode())
    refused(get(f"{other_head}.{payload}.{sig}"), 400, "InvalidToken")
    # malformed
    for junk in ["abc", "a.b", "a.b.c", "a.b.c.d", f"{head}.{payload}"]:
        refused(get(junk), 400, "InvalidToken")
    r = requests.get(gw.endpoint + path, headers={"Authorization": "Bearer not a jwt"}, timeout=30)
    refused(r, 400, "InvalidToken")

    # a bearer token beside a query signature: two credentials, refused
    r = call(gw, "GET", f"{path}?X-Amz-Signature=00&X-Amz-Credential=x", good)
    refused(r, 400, "InvalidArgument")
    r = call(gw, "GET", f"{path}?AWSAccessKeyId=AK&Signature=x&Expires=1", good)
    refused(r, 400, "InvalidArgument")
    # the token signs no payload: a signed aws-chunked stream cannot be checked
    r = call(gw, "PUT", f"/data/{obj()}", good, data=b"0;chunk-signature=00\r\n\r\n",
             headers={"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "x-amz-decoded-content-length": "0"})  # fmt: skip
    refused(r, 400, "InvalidRequest")
    # the good token itself is fine
    assert get(good).status_code == 200


# --------------------------------------------------------------------------- keys


def test_a_flood_of_unknown_kids_costs_at_most_the_rate_limited_fetches(gw, idp):
    path = "/data?list-type=2"
    # every junk token names a kid the IdP does not have
    junk = [mint(idp, header={"kid": f"junk-{uuid.uuid4().hex[:8]}"}) for _ in range(40)]
    jwks, discovery = idp.hits("/jwks"), idp.hits("/.well-known/openid-configuration")
    start = time.monotonic()
    for t in junk:
        refused(call(gw, "GET", path, t), 400, "InvalidToken")
    elapsed = time.monotonic() - start
    fetched = idp.hits("/jwks") - jwks
    assert fetched <= 1 + int(elapsed // MIN_REFETCH), f"{fetched} JWKS fetches for 40 junk tokens in {elapsed:.1f}s"
    assert idp.hits("/.well-known/openid-configuration") == discovery


def accepted_within(gw, token: str, timeout: float, path: str = "/data?list-type=2") -> list[str]:
    """Polls with `token` until it is accepted; returns the error codes seen
    before (a key s3gate has not fetched yet is only ever InvalidToken)."""
    seen = []

    def ok():
        r = call(gw, "GET", path, token)
        if r.status_code == 200:
            return True
        seen.append(f"{r.status_code} {code(r)}")
        return False

    until(ok, timeout, "the token to be accepted")
    assert set(seen) <= {"400 InvalidToken"}, seen
    return seen


def test_rotated_keys_are_accepted_without_a_restart(gw, idp):
    idp.add_key("k2", "ES256")
    idp.add_key("k3", "EdDSA")
    es256 = mint(idp, kid="k2")
    accepted_within(gw, es256, MIN_REFETCH + 10)
    # the same fetch brought the EdDSA key
    assert call(gw, "GET", "/data?list-type=2", mint(idp, kid="k3")).status_code == 200


def test_a_removed_key_is_refused_once_refetched(gw, idp):
    presented = mint(idp, kid="k1")
    assert call(gw, "GET", "/data?list-type=2", presented).status_code == 200
    unseen = mint(idp, kid="k1")  # signed by k1, never shown to s3gate yet
    assert "k1" not in idp.remove_key("k1")
    idp.add_key("k4")
    # a token under the new key makes s3gate refetch the set without k1
    accepted_within(gw, mint(idp, kid="k4"), MIN_REFETCH + 10)
    refused(call(gw, "GET", "/data?list-type=2", unseen), 400, "InvalidToken")
    # a token verified before is cached until its exp (README: what is cached)
    assert call(gw, "GET", "/data?list-type=2", presented).status_code == 200


def test_an_unreachable_idp_fails_closed_and_recovers(gw, idp):
    idp.add_key("k5")
    new_key = mint(idp, kid="k5")
    known_key = mint(idp, kid="k4")  # not presented yet, but its key is cached
    idp.stop()
    try:
        # an unknown kid cannot be told from a rotation: once s3gate may ask
        # again and cannot, 503 (before that: the last answer, no such kid)
        seen = []

        def unavailable():
            r = call(gw, "GET", "/data?list-type=2", new_key)
            assert r.status_code != 200, r.text
            seen.append(f"{r.status_code} {code(r)}")
            return r.status_code == 503 and code(r) == "ServiceUnavailable"

        until(unavailable, MIN_REFETCH + 10, "503 while the IdP is down")
        assert set(seen) <= {"400 InvalidToken", "503 ServiceUnavailable"}, seen
        # and it stays closed, not open
        refused(call(gw, "GET", "/data?list-type=2", new_key), 503, "ServiceUnavailable")
        # keys fetched before keep verifying
        assert call(gw, "GET", "/data?list-type=2", known_key).status_code == 200
    finally:
        idp.restart()
    accepted_within_any(gw, new_key, MIN_REFETCH + 10)


def accepted_within_any(gw, token: str, timeout: float) -> None:
    until(lambda: call(gw, "GET", "/data?list-type=2", token).status_code == 200, timeout, "recovery")


def test_a_provider_never_reached_fails_closed(tmp_path, backend):
    g = start_bearer_gateway(tmp_path, backend, f"http://127.0.0.1:{unused_port()}", "s3gate-no-idp")
    try:
        head = b64(json.dumps({"alg": "RS256", "kid": "k1"}).encode())
        body = b64(json.dumps({"iss": f"http://127.0.0.1:{g.port}", "aud": "s3gate"}).encode())
        # no provider for that issuer: refused
        refused(call(g, "GET", "/data?list-type=2", f"{head}.{body}.c2ln"), 400, "InvalidToken")
        issuer = re.search(r'issuer = "([^"]+)"', g.config_path.read_text()).group(1)
        body = b64(json.dumps({"iss": issuer, "aud": "s3gate", "exp": int(time.time()) + 60}).encode())
        r = call(g, "GET", "/data?list-type=2", f"{head}.{body}.c2ln")
        refused(r, 503, "ServiceUnavailable")
        wait_for(lambda: "cannot fetch oidc keys" in g.log_path.read_text(), "the fetch failure logged", g.proc, 5)
    finally:
        stop_gateway(g)


def test_a_private_idp_over_https_needs_its_ca_bundle(tmp_path, backend):
    ca = IdpCa(tmp_path)
    idp = Idp(tmp_path, name="idp-tls", tls=ca).start()
    try:
        assert idp.issuer.startswith("https://127.0.0.1:")
        token = mint(idp, groups=["readers"])
        g = start_bearer_gateway(tmp_path, backend, idp.issuer, "s3gate-ca", ca_bundle=ca.cert)
        try:
            assert call(g, "GET", "/data?list-type=2", token).status_code == 200
        finally:
            stop_gateway(g)
        # without the bundle the IdP's certificate is not trusted: fail closed
        g = start_bearer_gateway(tmp_path, backend, idp.issuer, "s3gate-no-ca")
        try:
            refused(call(g, "GET", "/data?list-type=2", token), 503, "ServiceUnavailable")
            wait_for(lambda: "cannot fetch oidc keys" in g.log_path.read_text(), "the failure logged", g.proc, 5)
        finally:
            stop_gateway(g)
        for p in ("s3gate-ca.log", "s3gate-no-ca.log"):
            assert_no_token_in(tmp_path / p)
    finally:
        idp.stop()


def test_a_ca_bundle_that_does_not_load_is_a_usage_error(tmp_path, backend):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(bearer_config(backend, make_keys(), "https://127.0.0.1:9", ca_bundle=tmp_path / "missing.pem"))
    out = subprocess.run([str(gateway_bin()), "serve", "--config", str(cfg), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                         env=gateway_env(backend, make_keys(), "info"))  # fmt: skip
    assert out.returncode == 64, out
    assert 'oidc provider "corp": ca_bundle' in out.stderr and "missing.pem" in out.stderr, out.stderr


# --------------------------------------------------------------------------- distributed


def test_distributed_data_plane_caches_verified_tokens(tmp_path, backend, idp):
    keys = make_keys()
    config = tmp_path / "cluster.toml"
    config.write_text(bearer_config(backend, keys, idp.issuer))
    env = gateway_env(backend, keys, "trace")
    cp, cp_addr = start_controlplane(gateway_bin(), "cp-bearer", config=config, env=env, **node_files(tmp_path, "cp"))
    dp, dp_addr = start_dataplane(gateway_bin(), "dp-bearer", control_planes=[f"http://{cp_addr}"], region=REGION,
                                  extra_args=["--rpc-timeout", "1s"], env=env, **node_files(tmp_path, "dp"))  # fmt: skip
    try:
        url = f"http://{dp_addr}/data?list-type=2"

        def get(token):
            ISSUED.append(token)
            return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        seen = mint(idp)
        assert get(seen).status_code == 200
        refused(get(mint(idp, expires_in=-600)), 400, "ExpiredToken")
        refused(get(mint(idp, claims={"aud": "x"})), 400, "InvalidToken")
        unseen = mint(idp)
        cp.stop()
        # the data plane answers a verified token from its cache (decision and
        # route are cached too); a token it never saw needs the control plane
        assert get(seen).status_code == 200
        refused(get(unseen), 503, "ServiceUnavailable")
    finally:
        dp.stop()
        cp.stop()
    for p in (cp, dp):
        assert_no_token_in(p.log_path)


def test_no_token_in_the_gateway_log(gw):
    """The module's gateway fixture checks its log after shutdown too."""
    assert len(ISSUED) > 50
    assert_no_token_in(gw.log_path)


def test_browser_page_uploads_and_downloads_with_a_bearer_token(gw, idp):
    """A web app at WEB_APP holding a JWT: fetch() PUT with `Authorization:
    Bearer` (preflighted, as a browser does: the header is not safelisted),
    then GET; both answers carry the CORS headers a browser needs to hand
    them to the page. Another origin's preflight is refused."""
    from test_cors import browser_fetch, preflight

    token = mint(idp)
    url = f"{gw.endpoint}/web/jwt/{uuid.uuid4().hex}.txt"
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    put = browser_fetch("PUT", url, WEB_APP, headers=auth, data=b"from the browser")
    assert put.status_code == 200, put.text
    assert "etag" in put.headers.get("access-control-expose-headers", "").lower(), put.headers
    got = browser_fetch("GET", url, WEB_APP, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200 and got.content == b"from the browser", got.text
    # Without the token the page sees the refusal (CORS headers on errors too).
    anon = browser_fetch("GET", url, WEB_APP)
    assert anon.status_code == 403, anon.text
    other = preflight(gw.endpoint, "/web/jwt/x.txt", "https://evil.example.net", "PUT", "authorization")
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers, other.headers
