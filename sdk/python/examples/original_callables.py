#!/usr/bin/env python3
"""The three callables of the original Python design, ported one to one.

The original gateway took three plain functions. Each becomes a handler of
an s3gate plugin, unchanged, behind a thin adapter:

==========================================================  ==============================================
original callable                                           s3gate plugin handler
==========================================================  ==============================================
``validator(token, bucket) -> bool``                        ``@plugin.authorize``: ``validator(req.principal, req.bucket)``
``hmac_fetcher(access_key) -> secret``                      ``@plugin.lookup_secret``: ``Identity(secret=hmac_fetcher(ak), principal=ak)``
``bucket_creds_fetcher(token, bucket) -> credentials``      ``@plugin.bucket_credentials``: ``Credentials(**bucket_creds_fetcher(principal, bucket))``
==========================================================  ==============================================

In the original design the ``token`` that ``validator`` and
``bucket_creds_fetcher`` receive is the access key the client signed with.
Here the access key becomes the principal's name (``lookup_secret`` says
so), so s3gate passes it back as ``req.principal`` / ``principal``. The
credentials ``bucket_creds_fetcher`` returns are the caller's own, hence
``per_principal=True``: s3gate caches them per (bucket, principal).

The functions read a small JSON "database" (``--db``; a demo table when
none is given)::

    {
      "secrets": {"AKIAALICE": "alice-secret"},            # hmac_fetcher
      "grants": {"AKIAALICE": ["reports"]},                # validator
      "bucket_creds": {"AKIAALICE": {"reports": {"access_key": "…", "secret_key": "…"}}}
    }

Run it, then point s3gate at it (``[[identity]]`` and ``[[policy]]`` with
``kind = "plugin"``, bucket ``credentials = { kind = "plugin" }``)::

    python3 original_callables.py --listen 127.0.0.1:50061 --db users.json
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional

import s3gate_plugin

DEMO_DB = {
    "secrets": {"AKIAEXAMPLEALICE": "alice-secret-key-for-the-example-000"},
    "grants": {"AKIAEXAMPLEALICE": ["reports"]},
    "bucket_creds": {},
}

DB: Dict[str, dict] = dict(DEMO_DB)


# === the original callables, unchanged in spirit ===


def validator(token: str, bucket: str) -> bool:
    """May the holder of ``token`` use ``bucket``?"""
    buckets: List[str] = DB["grants"].get(token, [])
    return bucket in buckets


def hmac_fetcher(access_key: str) -> Optional[str]:
    """The secret of ``access_key``; ``None`` for an unknown key."""
    return DB["secrets"].get(access_key)


def bucket_creds_fetcher(token: str, bucket: str) -> Optional[dict]:
    """The backend credentials the holder of ``token`` uses for ``bucket``:
    ``{"access_key", "secret_key", "session_token"?}``, or ``None``."""
    return DB["bucket_creds"].get(token, {}).get(bucket)


# === the plugin: one adapter per callable ===

plugin = s3gate_plugin.Plugin()


@plugin.authorize
def authorize(req: s3gate_plugin.AuthorizeRequest) -> bool:
    # True allows; False abstains (s3gate denies unless another source allows).
    return validator(req.principal, req.bucket)


@plugin.lookup_secret
def lookup_secret(access_key: str) -> Optional[s3gate_plugin.Identity]:
    secret = hmac_fetcher(access_key)
    if secret is None:
        return None
    return s3gate_plugin.Identity(secret=secret, principal=access_key, groups=[])


@plugin.bucket_credentials
def bucket_credentials(principal: str, bucket: str) -> Optional[s3gate_plugin.Credentials]:
    creds = bucket_creds_fetcher(principal, bucket)
    if creds is None:
        return None
    return s3gate_plugin.Credentials(
        access_key=creds["access_key"],
        secret_key=creds["secret_key"],
        session_token=creds.get("session_token"),
        per_principal=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50061", help="host:port (port 0 picks one)")
    parser.add_argument("--db", help="the JSON database (default: a demo table)")
    parser.add_argument("--ready-file", help='write {"grpc": "host:port"} here once listening')
    args = parser.parse_args()
    if args.db:
        with open(args.db, encoding="utf-8") as f:
            DB.clear()
            DB.update({"secrets": {}, "grants": {}, "bucket_creds": {}, **json.load(f)})
    plugin.serve(args.listen, ready_file=args.ready_file)


if __name__ == "__main__":
    main()
