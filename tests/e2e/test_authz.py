"""Authorization: the rules in conftest.RULES, exercised per principal.

Objects the test needs are written straight to the backend, so what the
gateway allows or denies is the only thing under test."""

import uuid

import botocore.exceptions
import pytest

from s3util import assert_s3_error, list_keys_xml


@pytest.fixture(scope="module")
def seeded(backend):
    """data-prod: notes.txt, reports/r1, reports/sub/r2, secret/x; public: hello.txt."""
    objs = {
        ("data-prod", "authz/notes.txt"): b"notes",
        ("data-prod", "reports/authz-r1"): b"r1",
        ("data-prod", "reports/sub/authz-r2"): b"r2",
        ("data-prod", "secret/authz-x"): b"top secret",
        ("public", "authz/hello.txt"): b"hello world",
    }
    for (bucket, key), body in objs.items():
        backend.put(bucket, key, body)
    return objs


def denied(fn, *args, **kwargs) -> dict:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn(*args, **kwargs)
    resp = e.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 403, resp
    return resp


def access_denied(fn, *args, **kwargs) -> None:
    resp = denied(fn, *args, **kwargs)
    if "Error" in resp and resp["Error"].get("Code") not in (None, "403"):  # HEAD has no body
        assert resp["Error"]["Code"] == "AccessDenied", resp


@pytest.fixture
def k():
    return uuid.uuid4().hex[:8]


# ----------------------------------------------------------------- anonymous


def test_anonymous_private_bucket_denied(gateway, seeded):
    anon = gateway.raw(None)
    assert_s3_error(anon.request("GET", "/data/authz/notes.txt"), 403, "AccessDenied")
    assert_s3_error(anon.request("GET", "/data", query=[("list-type", "2")]), 403, "AccessDenied")


def test_anonymous_public_bucket_read(gateway, s3_client, seeded):
    anon = gateway.raw(None)
    r = anon.request("GET", "/public/authz/hello.txt")
    assert r.status == 200 and r.body == b"hello world", r.describe()
    c = s3_client(None)
    assert c.get_object(Bucket="public", Key="authz/hello.txt")["Body"].read() == b"hello world"
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="public", Prefix="authz/")["Contents"]]
    assert keys == ["authz/hello.txt"]


def test_anonymous_public_bucket_write_denied(gateway, backend, k):
    r = gateway.raw(None).request("PUT", f"/public/authz/anon-{k}", body=b"x")
    assert_s3_error(r, 403, "AccessDenied")
    assert not backend.exists("public", f"authz/anon-{k}")
    r = gateway.raw(None).request("DELETE", "/public/authz/hello.txt")
    assert_s3_error(r, 403, "AccessDenied")
    assert backend.exists("public", "authz/hello.txt")


# ----------------------------------------------------------------- deny beats allow


def test_deny_beats_allow_read(client_as, gateway, seeded):
    alice = client_as("alice")
    access_denied(alice.get_object, Bucket="data", Key="secret/authz-x")
    access_denied(alice.head_object, Bucket="data", Key="secret/authz-x")
    access_denied(alice.get_object, Bucket="data", Key="secret/authz-x", Range="bytes=0-1")
    assert_s3_error(gateway.raw("alice").request("GET", "/data/secret/authz-x"), 403, "AccessDenied")
    # control: alice reads elsewhere in data
    assert alice.get_object(Bucket="data", Key="authz/notes.txt")["Body"].read() == b"notes"


def test_deny_beats_allow_write_and_delete(client_as, backend, seeded, k):
    alice = client_as("alice")
    access_denied(alice.put_object, Bucket="data", Key=f"secret/new-{k}", Body=b"x")
    assert not backend.exists("data-prod", f"secret/new-{k}")
    access_denied(alice.delete_object, Bucket="data", Key="secret/authz-x")
    assert backend.exists("data-prod", "secret/authz-x")
    access_denied(alice.create_multipart_upload, Bucket="data", Key=f"secret/mp-{k}")


def test_deny_beats_allow_list_prefix(client_as, seeded):
    alice = client_as("alice")
    access_denied(alice.list_objects_v2, Bucket="data", Prefix="secret/")
    access_denied(alice.list_objects, Bucket="data", Prefix="secret/")


def test_copy_needs_read_on_source(client_as, backend, seeded, k):
    alice = client_as("alice")
    access_denied(alice.copy_object, Bucket="data", Key=f"authz/stolen-{k}", CopySource={"Bucket": "data", "Key": "secret/authz-x"})
    assert not backend.exists("data-prod", f"authz/stolen-{k}")


def test_copy_needs_write_on_destination(client_as, backend, seeded, k):
    alice = client_as("alice")
    access_denied(alice.copy_object, Bucket="data", Key=f"secret/planted-{k}", CopySource={"Bucket": "data", "Key": "authz/notes.txt"})
    assert not backend.exists("data-prod", f"secret/planted-{k}")


def test_delete_objects_checks_every_key(client_as, backend, seeded, k):
    alice = client_as("alice")
    backend.put("data-prod", f"authz/del-{k}", b"d")
    try:
        r = alice.delete_objects(
            Bucket="data", Delete={"Objects": [{"Key": f"authz/del-{k}"}, {"Key": "secret/authz-x"}]}
        )
    except botocore.exceptions.ClientError as e:
        # rejecting the whole request is acceptable ...
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, e.response
    else:
        # ... and so is a per-key AccessDenied, but never a deletion.
        assert "secret/authz-x" not in [d["Key"] for d in r.get("Deleted", [])], r
        errs = {e["Key"]: e["Code"] for e in r.get("Errors", [])}
        assert errs.get("secret/authz-x") == "AccessDenied", r
    assert backend.exists("data-prod", "secret/authz-x")


# ----------------------------------------------------------------- bob: data/reports/* only


def test_bob_lists_reports_prefix(client_as, gateway, seeded):
    bob = client_as("bob")
    keys = [o["Key"] for o in bob.list_objects_v2(Bucket="data", Prefix="reports/")["Contents"]]
    assert "reports/authz-r1" in keys and "reports/sub/authz-r2" in keys
    assert all(x.startswith("reports/") for x in keys)
    r = bob.list_objects_v2(Bucket="data", Prefix="reports/", Delimiter="/")
    assert "reports/sub/" in [p["Prefix"] for p in r["CommonPrefixes"]]
    keys = [o["Key"] for o in bob.list_objects(Bucket="data", Prefix="reports/")["Contents"]]
    assert "reports/authz-r1" in keys
    # raw, without encoding-type
    r = gateway.raw("bob").request("GET", "/data", query=[("list-type", "2"), ("prefix", "reports/sub/")])
    assert r.status == 200, r.describe()
    assert list_keys_xml(r.body) == ("data", ["reports/sub/authz-r2"])


def test_bob_cannot_list_whole_bucket(client_as, gateway, seeded):
    bob = client_as("bob")
    access_denied(bob.list_objects_v2, Bucket="data")
    access_denied(bob.list_objects, Bucket="data")
    access_denied(bob.list_objects_v2, Bucket="data", Prefix="secret/")
    access_denied(bob.list_objects_v2, Bucket="data", Prefix="rep")  # "data/rep" does not match data/reports/*
    assert_s3_error(gateway.raw("bob").request("GET", "/data", query=[("list-type", "2")]), 403, "AccessDenied")


def test_bob_reads_and_writes_only_reports(client_as, backend, seeded, k):
    bob = client_as("bob")
    assert bob.get_object(Bucket="data", Key="reports/authz-r1")["Body"].read() == b"r1"
    assert bob.get_object(Bucket="data", Key="reports/sub/authz-r2")["Body"].read() == b"r2"
    bob.put_object(Bucket="data", Key=f"reports/bob-{k}", Body=b"by bob")
    assert backend.file("data-prod", f"reports/bob-{k}").read_bytes() == b"by bob"
    access_denied(bob.get_object, Bucket="data", Key="authz/notes.txt")
    access_denied(bob.head_object, Bucket="data", Key="authz/notes.txt")
    access_denied(bob.put_object, Bucket="data", Key=f"authz/bob-{k}", Body=b"x")
    assert not backend.exists("data-prod", f"authz/bob-{k}")
    # no DeleteObject for bob, even in reports/
    access_denied(bob.delete_object, Bucket="data", Key="reports/authz-r1")
    assert backend.exists("data-prod", "reports/authz-r1")


def test_bob_dot_segments_do_not_escape_reports(gateway, seeded):
    """S3 keys are opaque, but s3s-fs (like any filesystem-backed store) resolves
    "reports/../authz/notes.txt" to authz/notes.txt. A prefix rule on
    data/reports/* must not become a way to read outside reports/."""
    raw = gateway.raw("bob")
    for path in ["/data/reports/../authz/notes.txt", "/data/reports/./../authz/notes.txt"]:
        r = raw.request("GET", path)
        assert not (r.status == 200 and r.body == b"notes"), f"bob read data/authz/notes.txt via {path}: {r.describe()}"


def test_bob_copy_rules(client_as, backend, seeded, k):
    bob = client_as("bob")
    bob.copy_object(Bucket="data", Key=f"reports/copy-{k}", CopySource={"Bucket": "data", "Key": "reports/authz-r1"})
    assert backend.file("data-prod", f"reports/copy-{k}").read_bytes() == b"r1"
    access_denied(bob.copy_object, Bucket="data", Key=f"reports/stolen-{k}", CopySource={"Bucket": "data", "Key": "authz/notes.txt"})
    assert not backend.exists("data-prod", f"reports/stolen-{k}")


def test_bob_multipart_needs_specific_actions(client_as, backend, k):
    bob, alice = client_as("bob"), client_as("alice")
    key = f"reports/mp-{k}"
    uid = bob.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    try:
        etag = bob.upload_part(Bucket="data", Key=key, UploadId=uid, PartNumber=1, Body=b"part one")["ETag"]
        access_denied(bob.list_parts, Bucket="data", Key=key, UploadId=uid)  # s3:ListMultipartUploadParts
        access_denied(bob.abort_multipart_upload, Bucket="data", Key=key, UploadId=uid)  # s3:AbortMultipartUpload
        assert [p["PartNumber"] for p in alice.list_parts(Bucket="data", Key=key, UploadId=uid)["Parts"]] == [1]
        bob.complete_multipart_upload(
            Bucket="data", Key=key, UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
        )
        uid = None
        assert backend.file("data-prod", key).read_bytes() == b"part one"
    finally:
        if uid:
            alice.abort_multipart_upload(Bucket="data", Key=key, UploadId=uid)
    access_denied(bob.create_multipart_upload, Bucket="data", Key=f"authz/mp-{k}")


def test_list_buckets_per_principal(client_as):
    # A bucket is shown to whoever may s3:ListBucket it as a whole: bob may
    # list only data/reports/, so he does not see data (he still uses it).
    assert {b["Name"] for b in client_as("bob").list_buckets()["Buckets"]} == {"public"}
    assert {b["Name"] for b in client_as("carol").list_buckets()["Buckets"]} == {"other", "public"}
    assert {b["Name"] for b in client_as("alice").list_buckets()["Buckets"]} == {"data", "public", "dead"}


# ----------------------------------------------------------------- groups


def test_group_rule_grants_read_only(client_as, backend, seeded, k):
    dave = client_as("dave")  # in group analysts: GetObject + ListBucket on data
    assert dave.get_object(Bucket="data", Key="authz/notes.txt")["Body"].read() == b"notes"
    assert "authz/notes.txt" in [o["Key"] for o in dave.list_objects_v2(Bucket="data", Prefix="authz/")["Contents"]]
    access_denied(dave.put_object, Bucket="data", Key=f"authz/dave-{k}", Body=b"x")
    assert not backend.exists("data-prod", f"authz/dave-{k}")
    access_denied(dave.delete_object, Bucket="data", Key="authz/notes.txt")
    assert backend.exists("data-prod", "authz/notes.txt")


def test_group_rule_ops_and_env_secret(client_as, backend, k):
    carol = client_as("carol")  # secret given as env:VAR in the config
    carol.put_object(Bucket="other", Key=f"authz/carol-{k}", Body=b"c")
    assert backend.file("other", f"authz/carol-{k}").read_bytes() == b"c"
    access_denied(carol.get_object, Bucket="data", Key="authz/notes.txt")
    access_denied(client_as("alice").get_object, Bucket="other", Key=f"authz/carol-{k}")


def test_a_refused_upload_closes_the_connection_and_the_next_request_is_served(client_as, gateway, seeded):
    """A PUT refused before its body is read answers `Connection: close`:
    botocore sends a small body right behind its `Expect: 100-continue`
    head, and a kept connection would parse those bytes as the next request
    (a 400 for an innocent GET) or drop it. The same boto3 client then reads
    on, every time."""
    r = gateway.raw("bob").request("PUT", f"/data/authz-refused-{uuid.uuid4().hex}", body=b"abc")
    assert r.status == 403 and r.headers.get("connection") == "close", r.describe()
    bob = client_as("bob")
    for _ in range(20):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            bob.put_object(Bucket="data", Key=f"authz-refused-{uuid.uuid4().hex}", Body=b"abc")
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        assert bob.get_object(Bucket="data", Key="reports/authz-r1")["Body"].read() == b"r1"
