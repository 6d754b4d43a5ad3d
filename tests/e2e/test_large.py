"""1 GiB through a fresh gateway, then its peak RSS. Bodies are streamed on
both sides; the test never holds more than a MiB of the object."""

import hashlib
import http.client
import time

import pytest

from conftest import peak_rss_kib, start_gateway, stop_gateway
from s3util import pattern_stream, sign, target_for

GiB = 1 << 30
PEAK_RSS_LIMIT_MIB = 64


@pytest.fixture(scope="module")
def fresh_gateway(backend, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("gateway-large"), backend, name="s3gate-large", log_level="info")
    yield gw
    stop_gateway(gw)


def test_1gib_put_and_get_in_bounded_memory(fresh_gateway, backend):
    gw = fresh_gateway
    key = "large/1gib.bin"
    path = f"/data/{key}"
    creds = gw.keys["alice"].creds

    def put(payload_hash: str) -> str:
        h = sign("PUT", path, (), {"host": f"127.0.0.1:{gw.port}"}, payload_hash, creds).headers
        h["content-length"] = str(GiB)
        conn = http.client.HTTPConnection(*gw.addr, timeout=120)
        conn.putrequest("PUT", target_for(path), skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.endheaders()
        for block in pattern_stream(GiB):
            conn.send(block)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 200, f"PUT ({payload_hash}): HTTP {r.status} {body[:500]!r}"
        return r.getheader("ETag", "")

    sent = hashlib.md5()
    sha = hashlib.sha256()
    for block in pattern_stream(GiB):
        sent.update(block)
        sha.update(block)

    t0 = time.monotonic()
    etag = put("UNSIGNED-PAYLOAD")
    t_put = time.monotonic() - t0
    try:
        assert etag.strip('"') == sent.hexdigest()
        assert backend.file("data-prod", key).stat().st_size == GiB

        t0 = time.monotonic()
        h = sign("GET", path, (), {"host": f"127.0.0.1:{gw.port}"}, hashlib.sha256(b"").hexdigest(), creds).headers
        conn = http.client.HTTPConnection(*gw.addr, timeout=120)
        conn.putrequest("GET", target_for(path), skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        assert r.status == 200, f"GET: HTTP {r.status} {r.read(500)!r}"
        got = hashlib.md5()
        n = 0
        while True:
            block = r.read(1 << 20)
            if not block:
                break
            got.update(block)
            n += len(block)
        conn.close()
        t_get = time.monotonic() - t0
        assert n == GiB
        assert got.hexdigest() == sent.hexdigest()

        # and once more with the body's SHA-256 in x-amz-content-sha256, which the
        # gateway must verify without holding the body
        t0 = time.monotonic()
        assert put(sha.hexdigest()).strip('"') == sent.hexdigest()
        t_put_hex = time.monotonic() - t0

        peak_mib = peak_rss_kib(gw.proc.pid) / 1024
        print(
            f"\ns3gate peak RSS (VmHWM) after 1 GiB PUT (unsigned) + GET + PUT (hex sha256): {peak_mib:.1f} MiB "
            f"(PUT {t_put:.1f}s, GET {t_get:.1f}s, PUT hex {t_put_hex:.1f}s)"
        )
        assert peak_mib < PEAK_RSS_LIMIT_MIB, f"peak RSS {peak_mib:.1f} MiB >= {PEAK_RSS_LIMIT_MIB} MiB"
    finally:
        backend.client().delete_object(Bucket="data-prod", Key=key)
