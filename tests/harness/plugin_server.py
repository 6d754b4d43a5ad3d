#!/usr/bin/env python3
"""A test plugin written with the Python SDK (s3gate_plugin), for what the
ported example (sdk/python/examples/original_callables.py) must not grow:
a delay the test can change while the plugin runs, and a record of every
call it answered.

It answers from the same JSON database as the example (``secrets``,
``grants``, ``bucket_creds``; the access key is the principal), with two
differences a test needs:

- ``bucket_creds`` may have a ``""`` principal: the bucket's shared
  credentials (``per_principal=False``); everyone else's are their own.
- ``--control FILE`` is read on every call: ``{"delay_ms": N}`` makes every
  handler sleep N ms before answering (a slow plugin).

``--calls FILE`` gets one JSON line per call: ``{"rpc", "principal",
"bucket"}`` (``access_key`` for LookupSecret), appended when the call
arrives (before any delay), so a call the gateway gave up on is recorded
too.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Optional

import s3gate_plugin

DB: dict = {"secrets": {}, "grants": {}, "bucket_creds": {}}
CONTROL: Optional[str] = None
CALLS: Optional[str] = None
_calls_lock = threading.Lock()

plugin = s3gate_plugin.Plugin(max_workers=32)


def pause() -> None:
    if CONTROL is None:
        return
    try:
        with open(CONTROL, encoding="utf-8") as f:
            delay_ms = json.load(f).get("delay_ms", 0)
    except (OSError, ValueError):
        delay_ms = 0
    if delay_ms:
        time.sleep(delay_ms / 1000)


def record(**call: str) -> None:
    if CALLS is None:
        return
    with _calls_lock, open(CALLS, "a", encoding="utf-8") as f:
        f.write(json.dumps(call) + "\n")


@plugin.authorize
def authorize(req: s3gate_plugin.AuthorizeRequest) -> bool:
    record(rpc="authorize", principal=req.principal, bucket=req.bucket)
    pause()
    return req.bucket in DB["grants"].get(req.principal, [])


@plugin.lookup_secret
def lookup_secret(access_key: str) -> Optional[s3gate_plugin.Identity]:
    record(rpc="lookup_secret", access_key=access_key)
    pause()
    secret = DB["secrets"].get(access_key)
    if secret is None:
        return None
    return s3gate_plugin.Identity(secret=secret, principal=access_key, groups=[])


@plugin.bucket_credentials
def bucket_credentials(principal: str, bucket: str) -> Optional[s3gate_plugin.Credentials]:
    record(rpc="bucket_credentials", principal=principal, bucket=bucket)
    pause()
    creds = DB["bucket_creds"].get(principal, {}).get(bucket)
    if creds is None:
        return None
    return s3gate_plugin.Credentials(
        access_key=creds["access_key"],
        secret_key=creds["secret_key"],
        session_token=creds.get("session_token"),
        per_principal=principal != "",
    )


def main() -> None:
    global CONTROL, CALLS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--db", required=True)
    parser.add_argument("--ready-file")
    parser.add_argument("--control", help='JSON read on every call: {"delay_ms": N}')
    parser.add_argument("--calls", help="append one JSON line per answered call here")
    args = parser.parse_args()
    with open(args.db, encoding="utf-8") as f:
        DB.update(json.load(f))
    CONTROL, CALLS = args.control, args.calls
    plugin.serve(args.listen, ready_file=args.ready_file)


if __name__ == "__main__":
    main()
