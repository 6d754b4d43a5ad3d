"""Writing s3gate's TOML config: the e2e suite's (conftest.render_config) and
the benchmark's (bench/run.py) have different backends, keys and rules, but
are written the same way."""

from __future__ import annotations

import json


def q(s: str) -> str:
    """A TOML basic string (a JSON string is a valid one)."""
    return json.dumps(s)


def toml_value(v) -> str:
    """Strings, numbers and lists of strings as JSON (valid TOML for these);
    a dict as an inline table."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    return json.dumps(v)


def toml_table(kind: str, fields: dict, comment: str | None = None) -> list[str]:
    """The lines of an `[[kind]]` table, after a blank line and an optional
    `# comment`; None leaves a field out."""
    return [
        "",
        *([f"# {comment}"] if comment else []),
        f"[[{kind}]]",
        *(f"{k} = {toml_value(v)}" for k, v in fields.items() if v is not None),
    ]
