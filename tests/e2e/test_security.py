"""Regression tests for the security findings.

1. DeleteObjects: the gateway parses the document once, with full XML
   semantics, authorizes every key it found and forwards its own
   re-serialization of exactly those keys.
2. Request shapes: every (method, sub-resource) pair is one S3 operation with
   its own IAM action; anything else is 501 after authentication and never
   reaches a backend.
3. Nothing of the backend (bucket name, endpoint, access key, request ids)
   reaches the client.

Against the session gateway (s3s-fs behind it) and a dedicated one whose
config adds bucket "rec" on a recording upstream (recorder.py) and bucket
"scratch" (backend bucket scratch-prod, which these tests may lose).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import socket
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import stop_gateway
from recorder import ACCESS_KEY, BACKEND_BUCKET, Recorder, Reply, access_log_line, launch_gateway, recorder_config
from s3util import (
    S3_NS,
    Creds,
    Response,
    _chunk_sig,
    _trailer_sig,
    assert_s3_error,
    canonical_query,
    crc32_b64,
    parse_error,
    send,
    sha256_hex,
    sign,
    split,
    streaming_request,
    target_for,
    uri_encode,
)

REQUEST_ID = re.compile(r"^[0-9A-F]{20}$")
SCRATCH = "scratch-prod"

EXTRA_RULES = [
    ("allow", ["alice"], ["s3:*"], ["rec", "rec/*", "scratch", "scratch/*"]),
    ("deny", ["alice"], ["s3:*"], ["rec/keep/*"]),
    # dave: everything on scratch but listing it or deleting it
    ("allow", ["dave"], ["s3:*"], ["scratch", "scratch/*"]),
    ("deny", ["dave"], ["s3:DeleteBucket", "s3:ListBucket"], ["scratch", "scratch/*"]),
    # dave: objects on rec, but no version-specific actions; carol: both
    ("allow", ["dave"], ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], ["rec/*"]),
    (
        "allow",
        ["carol"],
        ["s3:GetObject", "s3:GetObjectVersion", "s3:DeleteObject", "s3:DeleteObjectVersion"],
        ["rec/*"],
    ),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def recorder():
    with Recorder() as r:
        yield r


@pytest.fixture(scope="module")
def recgw(backend, recorder, tmp_path_factory):
    (backend.root / SCRATCH).mkdir(exist_ok=True)
    extra = recorder_config(recorder, EXTRA_RULES)
    extra += '\n[[buckets]]\nname = "scratch"\nbackend = "local"\nbackend_bucket = "scratch-prod"\n'
    gw = launch_gateway(tmp_path_factory.mktemp("recgw"), backend, "s3gate-rec", extra_config=extra)
    yield gw
    stop_gateway(gw)


@pytest.fixture
def rec(recorder):
    """The recorder, emptied and answering 200 <DeleteResult/>."""
    recorder.reset()
    return recorder


@pytest.fixture
def k():
    return uuid.uuid4().hex[:10]


# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Full(Response):
    """A response read off the socket as is: `raw` holds status line, headers and body."""

    raw: bytes = b""
    reason: str = ""

    def describe(self) -> str:
        return f"{self.raw[:3000]!r}"


def exchange(addr, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Full:
    """One request on a fresh connection; the whole response, read to EOF."""
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body or method in ("PUT", "POST"):
        if not any(k.lower() == "content-length" for k in headers):
            head += f"content-length: {len(body)}\r\n"
    head += "connection: close\r\n\r\n"
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(head.encode() + body)
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head_b, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_b.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    hdrs = {}
    for line in lines[1:]:
        n, _, v = line.partition(":")
        hdrs[n.strip().lower()] = v.strip()
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        body_out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            body_out += rest[:n]
            rest = rest[n + 2 :]
        rest = body_out
    return Full(int(status), hdrs, rest, raw, reason[0] if reason else "")


def req(
    gw,
    who: str | None,
    method: str,
    path: str,
    query=(),
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    bare: bool = False,
    creds: Creds | None = None,
) -> Full:
    """A SigV4-signed request as `who` (None: anonymous, or `creds` if given).
    bare=True writes value-less query parameters as `?name` (as SDKs do)."""
    h = {"host": f"{gw.addr[0]}:{gw.addr[1]}", **(headers or {})}
    creds = creds or (gw.keys[who].creds if who else None)
    if creds is not None:
        h = sign(method, path, query, h, sha256_hex(body), creds).headers
    target = uri_encode(path, keep_slash=True)
    if query:
        if bare:
            target += "?" + "&".join(uri_encode(n) if v == "" else f"{uri_encode(n)}={uri_encode(v)}" for n, v in query)
        else:
            target += "?" + canonical_query(query)
    return exchange(gw.addr, method, target, h, body)


def md5_b64(b: bytes) -> str:
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def delete_doc(*key_xml: str, quiet: bool = False, ns: bool = True, extra: str = "") -> bytes:
    """A DeleteObjects document; each argument is the raw XML inside <Key>."""
    objs = "".join(f"<Object><Key>{x}</Key></Object>" for x in key_xml)
    q = "<Quiet>true</Quiet>" if quiet else ""
    xmlns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if ns else ""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Delete{xmlns}>{q}{objs}{extra}</Delete>'.encode()


def post_delete(gw, who: str, bucket: str, body: bytes, md5: bool = True) -> Full:
    return req(gw, who, "POST", f"/{bucket}", [("delete", "")], body, {"content-md5": md5_b64(body)} if md5 else None)


def chunked_delete(gw, who: str, bucket: str, doc: bytes, mode: str, chunk_size: int) -> Response:
    """DeleteObjects with an aws-chunked body. With a trailer,
    x-amz-checksum-crc32 is the integrity header; without one, Content-MD5 of
    the decoded document."""
    extra = {} if mode != "signed" else {"content-md5": md5_b64(doc)}
    return streaming_request(gw.addr, "POST", f"/{bucket}", [("delete", "")], doc, gw.keys[who].creds, mode, chunk_size, headers=extra)


def deleted_keys(body: bytes) -> list[str]:
    root = ET.fromstring(body)
    return [d.findtext(f"{S3_NS}Key") or d.findtext("Key") or "" for d in root if d.tag.replace(S3_NS, "") == "Deleted"]


def forwarded_keys(body: bytes) -> list[tuple[str, str | None]]:
    """(Key, VersionId) of each <Object> in a forwarded DeleteObjects body."""
    root = ET.fromstring(body)
    assert root.tag.replace(S3_NS, "") == "Delete", body
    out = []
    for o in root:
        if o.tag.replace(S3_NS, "") != "Object":
            continue
        key = o.find(f"{S3_NS}Key") if o.find(f"{S3_NS}Key") is not None else o.find("Key")
        ver = o.find(f"{S3_NS}VersionId") if o.find(f"{S3_NS}VersionId") is not None else o.find("VersionId")
        out.append((key.text or "", None if ver is None else ver.text))
    return out


def log_fields(line: str) -> dict[str, str]:
    """key=value fields of a text-format tracing line (quoted values unquoted)."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line):
        v = m.group(2)
        out[m.group(1)] = v[1:-1].replace('\\"', '"').replace("\\\\", "\\") if v.startswith('"') else v
    return out


def assert_request_id(r: Response) -> str:
    rid = r.headers.get("x-amz-request-id", "")
    assert REQUEST_ID.match(rid), f"x-amz-request-id {rid!r} is not the gateway's: {r.describe()}"
    return rid


# =========================================================================== 1. DeleteObjects


# Ways to write secret/<rest> inside <Key> so that a naive reader (first text
# node, regex, raw bytes) sees something that is not under secret/.
SECRET_SPLITS = {
    "comment": "sec<!---->ret/{r}",
    "comment-text": "sec<!-- secret -->ret/{r}",
    "cdata": "sec<![CDATA[ret/{r}]]>",
    "cdata-whole": "<![CDATA[secret/{r}]]>",
    "pi": "sec<?pi x?>ret/{r}",
    "entity-hex": "&#x73;ecret/{r}",
    "entity-dec": "secre&#116;/{r}",
    "comment-start": "<!---->secret/{r}",
    "comment-end": "secret/{r}<!---->",
    "mixed": "s<!--a-->e<![CDATA[c]]>&#x72;<?p q?>et/{r}",
}


@pytest.mark.parametrize("form", SECRET_SPLITS)
def test_delete_objects_split_secret_key_refused(gateway, backend, form, k):
    """alice may delete data/* but not data/secret/*, however the key is spelt."""
    backend.put("data-prod", f"secret/x-{k}", b"s")
    doc = delete_doc(SECRET_SPLITS[form].format(r=f"x-{k}"))
    assert_s3_error(post_delete(gateway, "alice", "data", doc), 403, "AccessDenied")
    assert backend.exists("data-prod", f"secret/x-{k}")


@pytest.mark.parametrize("form", ["comment", "cdata", "entity-hex", "mixed"])
def test_delete_objects_all_or_nothing(gateway, backend, form, k):
    """One refused key refuses the whole request: the allowed key survives too."""
    backend.put("data-prod", f"secret/x-{k}", b"s")
    backend.put("data-prod", f"dodel/{k}/ok", b"o")
    doc = delete_doc(f"dodel/{k}/ok", SECRET_SPLITS[form].format(r=f"x-{k}"), quiet=True)
    assert_s3_error(post_delete(gateway, "alice", "data", doc), 403, "AccessDenied")
    assert backend.exists("data-prod", f"secret/x-{k}")
    assert backend.exists("data-prod", f"dodel/{k}/ok")


# (raw XML inside <Key>, the key it means); "{d}" is a per-test directory.
BENIGN = {
    "comment": ("{d}/a<!---->b", "{d}/ab"),
    "comment-text": ("{d}/a<!-- c -->b", "{d}/ab"),
    "cdata": ("{d}/<![CDATA[a]]>b", "{d}/ab"),
    "cdata-markup": ("{d}/<![CDATA[a<b>&]]>c", "{d}/a<b>&c"),
    "pi": ("{d}/a<?pi x?>b", "{d}/ab"),
    "amp": ("{d}/a&amp;b", "{d}/a&b"),
    "charref": ("{d}/&#x61;b", "{d}/ab"),
    "lt-gt": ("{d}/&lt;a&gt;b", "{d}/<a>b"),
}


@pytest.mark.parametrize("form", BENIGN)
def test_delete_objects_benign_forms_delete_the_joined_key(gateway, backend, form, k):
    raw_key, key = (s.format(d=f"dodel/{k}") for s in BENIGN[form])
    decoy = f"dodel/{k}/a"  # the text before the first split
    backend.put("data-prod", key, b"target")
    if decoy != key:
        backend.put("data-prod", decoy, b"decoy")
    r = post_delete(gateway, "alice", "data", delete_doc(raw_key))
    assert r.status == 200, r.describe()
    assert deleted_keys(r.body) == [key], r.describe()
    assert not backend.exists("data-prod", key)
    if decoy != key:
        assert backend.exists("data-prod", decoy)



@pytest.mark.parametrize("key", ["authz/../secret/x", "./secret/x", "secret/./x", "/secret/x", "&#46;&#46;/data/x"])
def test_delete_objects_dot_segments_refused(gateway, backend, key):
    """Keys in a DeleteObjects document are checked like keys in a path: a
    backend that resolves them as paths would otherwise delete secret/x under
    a grant on authz/*."""
    backend.put("data-prod", "secret/x", b"keep")
    doc = f"<Delete><Object><Key>{key}</Key></Object></Delete>".encode()
    r = gateway.raw("alice").request(
        "POST",
        "/data",
        [("delete", "")],
        body=doc,
        headers={"content-md5": base64.b64encode(hashlib.md5(doc).digest()).decode()},
    )
    assert_s3_error(r, 400, "InvalidArgument")
    assert backend.exists("data-prod", "secret/x")

@pytest.mark.parametrize(
    "doc",
    [
        '<?xml version="1.0"?><!DOCTYPE Delete [<!ENTITY s "secret">]><Delete><Object><Key>&s;/x-{k}</Key></Object></Delete>',
        '<!DOCTYPE Delete><Delete><Object><Key>dodel/{k}/ok</Key></Object></Delete>',
        '<!DOCTYPE Delete SYSTEM "http://127.0.0.1:1/x.dtd"><Delete><Object><Key>dodel/{k}/ok</Key></Object></Delete>',
    ],
    ids=["internal-entity", "bare", "system"],
)
def test_delete_objects_doctype_refused(gateway, backend, doc, k):
    backend.put("data-prod", f"secret/x-{k}", b"s")
    backend.put("data-prod", f"dodel/{k}/ok", b"o")
    r = post_delete(gateway, "alice", "data", doc.format(k=k).encode())
    assert_s3_error(r, 400, "MalformedXML")
    assert backend.exists("data-prod", f"secret/x-{k}")
    assert backend.exists("data-prod", f"dodel/{k}/ok")


MALFORMED = {
    "unknown-child-of-delete": lambda k: delete_doc(f"dodel/{k}/ok", extra="<Bogus/>"),
    "unknown-child-of-object": lambda k: f"<Delete><Object><Key>dodel/{k}/ok</Key><Bogus>1</Bogus></Object></Delete>".encode(),
    "text-in-delete": lambda k: delete_doc(f"dodel/{k}/ok", extra="junk"),
    "text-in-object": lambda k: f"<Delete><Object>junk<Key>dodel/{k}/ok</Key></Object></Delete>".encode(),
    "text-after-root": lambda k: delete_doc(f"dodel/{k}/ok") + b"junk",
    "zero-keys": lambda k: b"<Delete></Delete>",
    "zero-keys-quiet": lambda k: b"<Delete><Quiet>true</Quiet></Delete>",
    "1001-keys": lambda k: delete_doc(*[f"dodel/{k}/ok"] + [f"dodel/{k}/n{i}" for i in range(1000)]),
    "not-xml": lambda k: b"dodel/ok",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_delete_objects_malformed(gateway, backend, case, k):
    backend.put("data-prod", f"dodel/{k}/ok", b"o")
    assert_s3_error(post_delete(gateway, "alice", "data", MALFORMED[case](k)), 400, "MalformedXML")
    assert backend.exists("data-prod", f"dodel/{k}/ok")


def test_delete_objects_refusal_is_logged_with_every_key(gateway, backend, k):
    backend.put("data-prod", f"secret/x-{k}", b"s")
    doc = delete_doc(f"dodel/{k}/first", f"sec<!---->ret/x-{k}", f"dodel/{k}/last")
    r = post_delete(gateway, "alice", "data", doc)
    assert_s3_error(r, 403, "AccessDenied")
    line = access_log_line(gateway, assert_request_id(r))
    f = log_fields(line)
    assert f.get("decision") == "deny", line
    assert f.get("op") == "DeleteObjects", line
    assert f.get("principal") == "alice" and f.get("identity") == "key", line
    assert f.get("key") == f"secret/x-{k}", line
    assert "keys" in f, f"no keys field: {line}"
    for key in (f"dodel/{k}/first", f"secret/x-{k}", f"dodel/{k}/last"):
        assert key in f["keys"], line


# ------------------------------------------------------------------ aws-chunked DeleteObjects

CHUNKED_MODES = ["signed-trailer", "unsigned-trailer", "signed"]


@pytest.mark.parametrize("chunk", [7, 13])
@pytest.mark.parametrize("mode", CHUNKED_MODES)
def test_chunked_delete_objects_benign(gateway, backend, mode, chunk, k):
    key, decoy = f"dodel/{k}/ab", f"dodel/{k}/a"
    backend.put("data-prod", key, b"t")
    backend.put("data-prod", decoy, b"d")
    r = chunked_delete(gateway, "alice", "data", delete_doc(f"dodel/{k}/a<!---->b"), mode, chunk)
    assert r.status == 200, r.describe()
    assert deleted_keys(r.body) == [key], r.describe()
    assert not backend.exists("data-prod", key)
    assert backend.exists("data-prod", decoy)


@pytest.mark.parametrize("form", ["comment", "cdata", "pi", "entity-hex"])
@pytest.mark.parametrize("chunk", [7, 13])
@pytest.mark.parametrize("mode", CHUNKED_MODES)
def test_chunked_delete_objects_secret_refused(gateway, backend, mode, chunk, form, k):
    backend.put("data-prod", f"secret/x-{k}", b"s")
    doc = delete_doc(SECRET_SPLITS[form].format(r=f"x-{k}"))
    assert_s3_error(chunked_delete(gateway, "alice", "data", doc, mode, chunk), 403, "AccessDenied")
    assert backend.exists("data-prod", f"secret/x-{k}")


# ------------------------------------------------------------------ what is forwarded


def assert_forwarded_delete(rec, keys: list[tuple[str, str | None]]) -> bytes:
    got = rec.taken()
    assert len(got) == 1, [(g.method, g.path, g.query) for g in got]
    g = got[0]
    assert (g.method, g.path) == ("POST", f"/{BACKEND_BUCKET}"), g
    assert g.query_names() == ["delete"], g.query
    body = g.body
    assert "aws-chunked" not in (g.header("content-encoding") or ""), (g.headers, body)
    assert g.header("x-amz-decoded-content-length") is None, g.headers
    assert g.header("x-amz-trailer") is None, g.headers
    assert not (g.header("x-amz-content-sha256") or "").startswith("STREAMING-"), g.headers
    assert g.header("transfer-encoding") is None, g.headers
    assert g.header("content-length") == str(len(body)), g.headers
    assert g.header("content-md5") == md5_b64(body), (g.headers, body)
    for marker in (b"<!--", b"CDATA", b"<?pi", b"<?p ", b"DOCTYPE", b"&#"):
        assert marker not in body, f"forwarded body carries {marker!r}: {body!r}"
    assert forwarded_keys(body) == keys, body
    return body


def test_forwarded_delete_is_the_gateways_own_document(recgw, rec, k):
    raw = [f"d/{k}/a<!---->b", f"d/{k}/<![CDATA[c<d>]]>", f"d/{k}/&#x65;&amp;f", f"d/{k}/g<?pi x?>h", f"d/{k}/plain"]
    r = post_delete(recgw, "alice", "rec", delete_doc(*raw, quiet=True))
    assert r.status == 200, r.describe()
    want = [(f"d/{k}/ab", None), (f"d/{k}/c<d>", None), (f"d/{k}/e&f", None), (f"d/{k}/gh", None), (f"d/{k}/plain", None)]
    assert_forwarded_delete(rec, want)


def test_forwarded_delete_without_namespace(recgw, rec, k):
    r = post_delete(recgw, "alice", "rec", delete_doc(f"d/{k}/x", ns=False))
    assert r.status == 200, r.describe()
    assert_forwarded_delete(rec, [(f"d/{k}/x", None)])


def test_forwarded_delete_1000_keys(recgw, rec, k):
    keys = [f"d/{k}/{i:04d}" for i in range(1000)]
    r = post_delete(recgw, "alice", "rec", delete_doc(*keys))
    assert r.status == 200, r.describe()
    assert_forwarded_delete(rec, [(x, None) for x in keys])


@pytest.mark.parametrize("mode", CHUNKED_MODES)
def test_forwarded_chunked_delete_is_plain(recgw, rec, mode, k):
    doc = delete_doc(f"d/{k}/a<!---->b", f"d/{k}/<![CDATA[c]]>")
    r = chunked_delete(recgw, "alice", "rec", doc, mode, 7)
    assert r.status == 200, r.describe()
    assert_forwarded_delete(rec, [(f"d/{k}/ab", None), (f"d/{k}/c", None)])


@pytest.mark.parametrize("form", ["comment", "cdata", "pi"])
def test_refused_delete_reaches_no_backend(recgw, rec, form, k):
    split_keep = {"comment": "ke<!---->ep/x", "cdata": "ke<![CDATA[ep/x]]>", "pi": "ke<?pi?>ep/x"}[form]
    r = post_delete(recgw, "alice", "rec", delete_doc(f"d/{k}/ok", split_keep))
    assert_s3_error(r, 403, "AccessDenied")
    assert rec.taken() == []


def test_delete_objects_version_needs_delete_object_version(recgw, rec, k):
    doc = f"<Delete><Object><Key>d/{k}/v</Key><VersionId>v1</VersionId></Object></Delete>".encode()
    # dave: s3:DeleteObject on rec/*, no s3:DeleteObjectVersion
    assert_s3_error(post_delete(recgw, "dave", "rec", doc), 403, "AccessDenied")
    assert rec.taken() == []
    # control: without the version it is allowed
    r = post_delete(recgw, "dave", "rec", delete_doc(f"d/{k}/v"))
    assert r.status == 200, r.describe()
    assert_forwarded_delete(rec, [(f"d/{k}/v", None)])
    rec.reset()
    # carol has both
    r = post_delete(recgw, "carol", "rec", doc)
    assert r.status == 200, r.describe()
    assert_forwarded_delete(rec, [(f"d/{k}/v", "v1")])


# =========================================================================== 2. request shapes

UNSUPPORTED = [
    ("GET", "", [("retention", "")]),
    ("GET", "", [("attributes", "")]),
    ("GET", "", [("legal-hold", "")]),
    ("GET", "", [("metadata-table", "")]),
    ("POST", "", [("restore", "")]),
    ("DELETE", "", [("versioning", "")]),
    ("DELETE", "", [("logging", "")]),
    ("DELETE", "", [("notification", "")]),
    ("DELETE", "", [("object-lock", "")]),
    ("PUT", "", [("location", "")]),
    ("HEAD", "", [("acl", "")]),
    ("HEAD", "/k", [("tagging", "")]),
    ("POST", "/k", [("select", ""), ("select-type", "2")]),
    ("GET", "/k", [("torrent", "")]),
]


@pytest.mark.parametrize("bare", [True, False], ids=["bare", "eq"])
@pytest.mark.parametrize("bucket", ["scratch", "rec"])
@pytest.mark.parametrize(
    "method,suffix,query", UNSUPPORTED, ids=[f"{m}{s}?{'&'.join(n for n, _ in q)}" for m, s, q in UNSUPPORTED]
)
def test_unsupported_shape_is_501(recgw, rec, backend, bucket, method, suffix, query, bare):
    (backend.root / SCRATCH).mkdir(exist_ok=True)
    r = req(recgw, "alice", method, f"/{bucket}{suffix}", query, bare=bare)
    if method == "HEAD":
        assert r.status == 501, r.describe()
    else:
        assert_s3_error(r, 501, "NotImplemented")
    assert_request_id(r)
    assert rec.taken() == []
    assert (backend.root / SCRATCH).is_dir()


@pytest.mark.parametrize("bucket", ["scratch", "rec"])
def test_upload_id_without_part_number(recgw, rec, bucket):
    r = req(recgw, "alice", "PUT", f"/{bucket}/k", [("uploadId", "x")], body=b"data")
    assert_s3_error(r, (400, 501), None)
    assert rec.taken() == []


def test_retention_is_not_a_listing(recgw, backend, k):
    """dave is denied s3:ListBucket on scratch: ?retention must not list it."""
    backend.put(SCRATCH, f"listme-{k}", b"x")
    assert_s3_error(req(recgw, "dave", "GET", "/scratch", [("list-type", "2")]), 403, "AccessDenied")  # control
    for q in ([("retention", "")], [("retention", ""), ("list-type", "2")]):
        r = req(recgw, "dave", "GET", "/scratch", q, bare=True)
        assert_s3_error(r, 501, "NotImplemented")
        assert f"listme-{k}".encode() not in r.body


def test_bob_retention_is_not_a_listing(gateway, backend, k):
    backend.put("data-prod", f"reports/listme-{k}", b"x")
    for q in ([("retention", "")], [("retention", ""), ("prefix", "reports/")]):
        r = req(gateway, "bob", "GET", "/data", q, bare=True)
        assert_s3_error(r, (403, 501), None)
        assert f"listme-{k}".encode() not in r.body


@pytest.mark.parametrize("who", ["dave", "alice"])
def test_delete_versioning_does_not_delete_the_bucket(recgw, backend, who, k):
    """dave is denied s3:DeleteBucket on scratch; alice may, but not through ?versioning."""
    (backend.root / SCRATCH).mkdir(exist_ok=True)
    backend.put(SCRATCH, f"keepme-{k}", b"x")
    if who == "dave":
        assert_s3_error(req(recgw, "dave", "DELETE", "/scratch"), 403, "AccessDenied")  # control
    for q in ([("versioning", "")], [("versioning", ""), ("x-id", "DeleteBucket")]):
        r = req(recgw, who, "DELETE", "/scratch", q, bare=True)
        assert_s3_error(r, 501, "NotImplemented")
    assert (backend.root / SCRATCH).is_dir()
    assert backend.exists(SCRATCH, f"keepme-{k}")


def test_real_subresources_still_work(gateway, client_as):
    r = req(gateway, "alice", "GET", "/data", [("location", "")], bare=True)
    assert r.status == 200, r.describe()
    assert b"LocationConstraint" in r.body, r.describe()
    assert client_as("alice").get_bucket_location(Bucket="data")["ResponseMetadata"]["HTTPStatusCode"] == 200


SUPPORTED_ON_REC = [
    ("GET", "/k", [("tagging", "")]),
    ("PUT", "/k", [("tagging", "")]),
    ("DELETE", "/k", [("tagging", "")]),
    ("GET", "/k", [("acl", "")]),
    ("GET", "", [("versioning", "")]),
    ("GET", "", [("uploads", "")]),
    ("GET", "", [("versions", "")]),
    ("GET", "", [("list-type", "2")]),
    ("GET", "/k", [("uploadId", "u1")]),
    ("PUT", "/k", [("partNumber", "1"), ("uploadId", "u1")]),
    ("DELETE", "/k", [("uploadId", "u1")]),
]


@pytest.mark.parametrize(
    "method,suffix,query", SUPPORTED_ON_REC, ids=[f"{m}{s}?{'&'.join(n for n, _ in q)}" for m, s, q in SUPPORTED_ON_REC]
)
def test_supported_shapes_reach_the_backend(recgw, rec, method, suffix, query):
    body = b"<Tagging><TagSet/></Tagging>" if method == "PUT" and suffix else b""
    r = req(recgw, "alice", method, f"/rec{suffix}", query, body=body, bare=True)
    assert r.status < 300, r.describe()
    got = rec.taken()
    assert len(got) == 1, got
    assert (got[0].method, got[0].path) == (method, f"/{BACKEND_BUCKET}{suffix}"), got[0]
    assert sorted(got[0].query_names()) == sorted(n for n, _ in query), got[0].query


REPEATED = [
    ("GET", "", [("prefix", "reports/"), ("prefix", "")]),
    ("GET", "", [("list-type", "2"), ("list-type", "2")]),
    ("GET", "", [("list-type", "2"), ("prefix", "reports/"), ("prefix", "")]),
    ("GET", "/reports/k", [("versionId", "a"), ("versionId", "b")]),
    ("PUT", "/reports/k", [("uploadId", "a"), ("uploadId", "b"), ("partNumber", "1")]),
    ("PUT", "/reports/k", [("uploadId", "a"), ("partNumber", "1"), ("partNumber", "2")]),
]


@pytest.mark.parametrize("bucket", ["data", "rec"])
@pytest.mark.parametrize("method,suffix,query", REPEATED, ids=[f"{m}{s}?{'&'.join(n for n, _ in q)}" for m, s, q in REPEATED])
def test_repeated_query_parameter_refused(recgw, rec, bucket, method, suffix, query):
    assert len(canonical_query(query).split("&")) == len(query)  # the signature covers both
    r = req(recgw, "alice", method, f"/{bucket}{suffix}", query, body=b"x" if method == "PUT" else b"")
    assert_s3_error(r, 400, "InvalidArgument")
    assert rec.taken() == []


def test_bob_repeated_prefix_gets_no_listing(gateway, backend, k):
    """bob may list reports/ only; a second, empty prefix must not widen that."""
    backend.put("data-prod", f"authz-sec-{k}", b"x")
    r = req(gateway, "bob", "GET", "/data", [("list-type", "2"), ("prefix", "reports/"), ("prefix", "")])
    assert_s3_error(r, (400, 403), None)
    assert f"authz-sec-{k}".encode() not in r.body


@pytest.mark.parametrize("query", [[("xuploadId", "1")], [("retention", "")]], ids=["unknown-param", "unsupported"])
def test_authentication_comes_first(gateway, query):
    alice = gateway.keys["alice"]
    r = req(gateway, None, "GET", "/data/k", query, creds=Creds(alice.access_key, alice.secret_key + "x"))
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    r = req(gateway, None, "GET", "/data/k", query, creds=Creds("S3GATENOBODY1", "whatever-secret"))
    assert_s3_error(r, 403, "InvalidAccessKeyId")
    assert_s3_error(req(gateway, None, "GET", "/data/k", query), 403, "AccessDenied")


def test_versioned_object_ops_need_version_actions(recgw, rec, k):
    key = f"/rec/d/{k}"
    for method in ("GET", "DELETE"):
        # dave: GetObject + DeleteObject on rec/*, but neither *Version action
        assert_s3_error(req(recgw, "dave", method, key, [("versionId", "v1")]), 403, "AccessDenied")
        assert rec.taken() == []
        r = req(recgw, "dave", method, key)  # control
        assert r.status < 300, r.describe()
        # carol has both
        r = req(recgw, "carol", method, key, [("versionId", "v1")])
        assert r.status < 300, r.describe()
        got = rec.taken()
        assert [(g.method, g.query_names()) for g in got] == [(method, []), (method, ["versionId"])], got
        assert "v1" in got[1].query, got[1]
        rec.reset()


def test_bob_versioned_get_denied(gateway, backend, k):
    backend.put("data-prod", f"reports/v-{k}", b"x")
    assert req(gateway, "bob", "GET", f"/data/reports/v-{k}").status == 200  # control
    assert_s3_error(req(gateway, "bob", "GET", f"/data/reports/v-{k}", [("versionId", "null")]), 403, "AccessDenied")


# =========================================================================== 3. no backend leaks


def leaks(r: Full, *needles: str) -> list[str]:
    text = r.raw.decode("latin-1")
    return [n for n in needles if n in text]


def test_request_id_on_every_response(gateway, backend, k):
    backend.put("data-prod", f"rid/{k}", b"hello")
    cases = [
        ("GET", f"/data/rid/{k}", (), 200),  # backend success
        ("HEAD", f"/data/rid/{k}", (), 200),
        ("GET", f"/data/rid/missing-{k}", (), 404),  # backend error
        ("HEAD", f"/data/rid/missing-{k}", (), 404),
        ("GET", "/data/secret/x", (), 403),  # gateway error
        ("GET", "/data", [("retention", "")], 501),
        ("GET", "/", (), 200),  # answered by the gateway
        ("PUT", f"/data/rid/put-{k}", (), 200),
    ]
    for method, path, query, status in cases:
        r = req(gateway, "alice", method, path, query, body=b"x" if method == "PUT" else b"")
        assert r.status == status, (method, path, r.describe())
        rid = assert_request_id(r)
        if status >= 400 and method != "HEAD":
            assert parse_error(r.body)["RequestId"] == rid, r.describe()
        assert not leaks(r, "data-prod", f"127.0.0.1:{backend.addr[1]}", backend.creds.access_key), r.describe()


def test_backend_error_is_rebuilt(gateway, backend, k):
    r = req(gateway, "alice", "GET", f"/data/nothing-{k}")
    err = assert_s3_error(r, 404, "NoSuchKey")
    assert err["RequestId"] == assert_request_id(r)
    if "Resource" in err:
        assert err["Resource"].startswith("/data/"), err
    if "BucketName" in err:
        assert err["BucketName"] == "data", err
    assert not leaks(r, "data-prod", f"127.0.0.1:{backend.addr[1]}", f":{backend.addr[1]}", backend.creds.access_key), r.describe()


@pytest.mark.parametrize(
    "source",
    ["/data/" + "a" * 2000, "/data/nothing-here", "data/%ff%fe", "/data/" + "b" * 1100 + "?versionId=" + "c" * 900],
    ids=["long", "missing", "bad-encoding", "long-version"],
)
def test_copy_source_errors_do_not_leak(gateway, backend, source, k):
    r = req(gateway, "alice", "PUT", f"/data/copy-{k}", headers={"x-amz-copy-source": source})
    assert r.status >= 400, r.describe()
    assert_request_id(r)
    assert not leaks(r, "data-prod", f"127.0.0.1:{backend.addr[1]}", f":{backend.addr[1]}", backend.creds.access_key), r.describe()
    assert not backend.exists("data-prod", f"copy-{k}")


def hostile_replies(rec) -> dict[str, Reply]:
    ep = f"127.0.0.1:{rec.port}"
    leak_headers = {
        "content-type": "application/xml",
        "x-amz-request-id": "BACKENDREQID00000000",
        "x-amz-id-2": "backend+host+id2=",
        "location": f"http://{ep}/{BACKEND_BUCKET}/k",
    }

    def err(code: str, inner: str) -> bytes:
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>{inner}'
            f"<RequestId>BACKENDREQID00000000</RequestId><HostId>HOSTIDMARKER/backend+host+id=</HostId></Error>"
        ).encode()

    return {
        "access-denied": Reply(
            403,
            err(
                "AccessDenied",
                f"<Message>{ACCESS_KEY} may not read {BACKEND_BUCKET} at http://{ep}</Message>"
                f"<Resource>/{BACKEND_BUCKET}/k</Resource><BucketName>{BACKEND_BUCKET}</BucketName>"
                f"<AWSAccessKeyId>{ACCESS_KEY}</AWSAccessKeyId>",
            ),
            leak_headers,
        ),
        "signature": Reply(
            403,
            err(
                "SignatureDoesNotMatch",
                f"<Message>sig</Message><AWSAccessKeyId>{ACCESS_KEY}</AWSAccessKeyId>"
                f"<StringToSign>AWS4-HMAC-SHA256\n20240101T000000Z\n20240101/us-east-1/s3/aws4_request\nSTSMARKER</StringToSign>"
                f"<CanonicalRequest>GET\n/{BACKEND_BUCKET}/k\n\nhost:{ep}\nCREQMARKER</CanonicalRequest>",
            ),
            leak_headers,
        ),
        "redirect": Reply(
            301,
            err(
                "PermanentRedirect",
                f"<Message>use the endpoint</Message><Endpoint>{BACKEND_BUCKET}.{ep}</Endpoint><Bucket>{BACKEND_BUCKET}</Bucket>",
            ),
            leak_headers,
        ),
        "no-such-key": Reply(
            404,
            err("NoSuchKey", f"<Message>no {BACKEND_BUCKET}/k on {ep}</Message><Key>k</Key><Resource>/{BACKEND_BUCKET}/k</Resource>"),
            leak_headers,
        ),
        "internal": Reply(500, err("InternalError", f"<Message>{ep} is sad</Message>"), leak_headers),
        "ok-with-location": Reply(200, b"hello", {**leak_headers, "content-type": "text/plain"}),
    }


def rec_needles(rec) -> list[str]:
    return [
        BACKEND_BUCKET,
        f"127.0.0.1:{rec.port}",
        f":{rec.port}",
        ACCESS_KEY,
        "BACKENDREQID",
        "HOSTIDMARKER",
        "STSMARKER",
        "CREQMARKER",
    ]


@pytest.mark.parametrize("case", ["access-denied", "signature", "redirect", "no-such-key", "internal", "ok-with-location"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_hostile_backend_responses_do_not_leak(recgw, rec, case, method):
    reply = hostile_replies(rec)[case]
    rec.reset(reply)
    r = req(recgw, "alice", method, "/rec/k", body=b"body" if method == "PUT" else b"")
    assert len(rec.taken()) == 1
    assert not leaks(r, *rec_needles(rec)), r.describe()
    rid = assert_request_id(r)
    if reply.status >= 400 and method != "HEAD":
        want = ET.fromstring(reply.body).findtext("Code")
        err = assert_s3_error(r, reply.status, want)
        assert err["RequestId"] == rid, r.describe()
        if "Resource" in err:
            assert err["Resource"].startswith("/rec"), err
        if "BucketName" in err:
            assert err["BucketName"] == "rec", err
    elif reply.status >= 400:
        assert r.status == reply.status, r.describe()


@pytest.mark.parametrize("case", ["list", "complete-multipart", "copy"])
def test_backend_success_documents_do_not_leak(recgw, rec, case):
    ep = f"127.0.0.1:{rec.port}"
    ns = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    docs = {
        "list": f"<ListBucketResult {ns}><Name>{BACKEND_BUCKET}</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
        f"<IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size></Contents></ListBucketResult>",
        "complete-multipart": f"<CompleteMultipartUploadResult {ns}><Location>http://{ep}/{BACKEND_BUCKET}/k</Location>"
        f'<Bucket>{BACKEND_BUCKET}</Bucket><Key>k</Key><ETag>"e"</ETag></CompleteMultipartUploadResult>',
        "copy": f'<CopyObjectResult {ns}><ETag>"e"</ETag><LastModified>2024-01-01T00:00:00.000Z</LastModified></CopyObjectResult>',
    }
    rec.reset(Reply(200, docs[case].encode(), {"content-type": "application/xml", "x-amz-request-id": "BACKENDREQID00000000"}))
    if case == "list":
        r = req(recgw, "alice", "GET", "/rec", [("list-type", "2")])
    elif case == "complete-multipart":
        body = b'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"e"</ETag></Part></CompleteMultipartUpload>'
        r = req(recgw, "alice", "POST", "/rec/k", [("uploadId", "u1")], body=body)
    else:
        r = req(recgw, "alice", "PUT", "/rec/k2", headers={"x-amz-copy-source": "/rec/k"})
    assert r.status == 200, r.describe()
    assert_request_id(r)
    assert not leaks(r, *rec_needles(rec)), r.describe()
    assert len(rec.taken()) == 1
    # the copy source named to the backend is the backend bucket, never shown back
    if case == "copy":
        assert rec.taken()[0].header("x-amz-copy-source").lstrip("/").startswith(BACKEND_BUCKET + "/")


def test_tab_in_metadata_value(gateway, backend, k):
    r = req(gateway, "alice", "PUT", f"/data/tab-{k}", body=b"x", headers={"x-amz-meta-note": "a\tb"})
    assert r.status == 200, r.describe()
    assert backend.exists("data-prod", f"tab-{k}")
    meta = backend.client().head_object(Bucket="data-prod", Key=f"tab-{k}")["Metadata"]
    assert meta.get("note", "").replace("\t", " ") in ("a b", "a  b"), meta


# --------------------------------------------------------------------------- configuration faults


def test_configuration_fault_is_500_with_the_cause_logged(backend, tmp_path_factory):
    """A backend the gateway cannot use because of its own configuration (a CA
    bundle that does not exist) is the operator's fault: 500 InternalError,
    not 503 'authorization service unavailable', and the cause in the log but
    not in the response."""
    from conftest import rules_config

    extra = (
        '\n[[backends]]\nname = "badca"\nendpoint = "https://127.0.0.1:1"\nregion = "us-east-1"\n'
        'addressing_style = "path"\naccess_key = "BADCAKEY"\nsecret_key = "badca-secret-0000000000"\n'
        'ca_bundle = "/nonexistent/s3gate-test-ca.pem"\n'
        '\n[[buckets]]\nname = "badca"\nbackend = "badca"\n'
    ) + rules_config([("allow", ["alice"], ["s3:*"], ["badca", "badca/*"])])
    gw = launch_gateway(tmp_path_factory.mktemp("badca"), backend, "s3gate-badca", extra_config=extra)
    try:
        r = gw.raw("alice").request("GET", "/badca/k")
        err = assert_s3_error(r, 500, "InternalError")
        assert "nonexistent" not in r.body.decode(errors="replace"), r.describe()
        assert "127.0.0.1:1" not in r.body.decode(errors="replace"), r.describe()
        line = access_log_line(gw, err["RequestId"])
        assert "status=500" in line, line
        log = gw.log_path.read_text(errors="replace")
        assert "configuration fault" in log and "s3gate-test-ca.pem" in log, log[-2000:]
    finally:
        stop_gateway(gw)
