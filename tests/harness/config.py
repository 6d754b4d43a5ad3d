"""Writing s3gate's TOML config: the e2e suite's (conftest.render_config) and
the benchmark's (bench/run.py) have different backends, keys and rules, but
are written the same way."""

from __future__ import annotations

import json


def q(s: str) -> str:
    """A TOML basic string (a JSON string is a valid one)."""
    return json.dumps(s)


def toml_table(kind: str, fields: dict, comment: str | None = None) -> list[str]:
    """The lines of an `[[kind]]` table, after a blank line and an optional
    `# comment`. Values are strings, numbers or lists of strings, written as
    JSON (valid TOML for these); None leaves the field out."""
    return [
        "",
        *([f"# {comment}"] if comment else []),
        f"[[{kind}]]",
        *(f"{k} = {json.dumps(v)}" for k, v in fields.items() if v is not None),
    ]
