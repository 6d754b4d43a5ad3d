#!/usr/bin/env python3
"""bench/run.py --policy plugin and scenario S4src: the decisions of
bench.rego (and of the bench's [[rules]]) as an s3gate plugin written with
the Python SDK (sdk/python, `s3gate-plugin`).

The hot principal: the whole bucket (scope "", so S1 stays warm); the cold
group: GetObject under cold/ except *.secret, for the exact key only (every
S4 request one Authorize call). Everything else abstains (s3gate denies).
"""

from __future__ import annotations

import argparse

import s3gate_plugin

BUCKET = "bench"

plugin = s3gate_plugin.Plugin(max_workers=32)


@plugin.authorize
def authorize(req: s3gate_plugin.AuthorizeRequest) -> "bool | s3gate_plugin.Decision":
    if req.bucket != BUCKET:
        return False
    if req.principal == "hot":
        return s3gate_plugin.Decision(allow=True, scope_prefix="")
    return (
        "cold" in req.groups
        and req.action == "s3:GetObject"
        and req.key.startswith("cold/")
        and not req.key.endswith(".secret")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--ready-file")
    args = ap.parse_args()
    plugin.serve(args.listen, ready_file=args.ready_file)


if __name__ == "__main__":
    main()
