"""The values handlers receive and return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence


@dataclass(frozen=True)
class RequestIdentity:
    """How the principal of a request was authenticated."""

    source: str
    """``key`` (an access key: s3gate-issued or from a secret lookup),
    ``sts`` (temporary keys), ``jwt`` (a bearer token), ``mtls`` (a client
    certificate) or ``anonymous``."""

    claims: Mapping[str, str] = field(default_factory=dict)
    """The token's claims, flattened to strings (empty for access keys)."""


@dataclass(frozen=True)
class AuthorizeRequest:
    """The decision input document, as every s3gate policy source sees it.

    The attribute names are those of the input document that Rego policies
    and SQL queries are written against.
    """

    principal: str
    """The principal's name; ``*anonymous*`` for unauthenticated requests."""

    groups: Sequence[str]
    """The principal's groups."""

    identity: RequestIdentity
    """Who vouched for the principal, and the token's claims."""

    action: str
    """The IAM action, e.g. ``s3:GetObject`` or ``s3:ListBucket``."""

    bucket: str
    """The bucket name as the client used it."""

    key: str
    """The object key when ``kind == "object"``; ``""`` otherwise."""

    prefix: str
    """The listed prefix when ``kind == "prefix"`` (ListObjects); ``""``
    otherwise."""

    kind: str
    """``object``, ``prefix`` (a listing) or ``bucket``."""

    method: str
    """The HTTP method."""

    client_ip: str
    """The client's address as the gateway saw it; ``""`` when unknown."""

    time: str
    """When s3gate asked, RFC 3339 in UTC (``2026-12-03T18:00:00Z``)."""

    headers: Mapping[str, str]
    """S3-relevant request headers (lower-case names, never a secret)."""


@dataclass(frozen=True)
class Decision:
    """A detailed answer of an ``@plugin.authorize`` handler.

    ``allow=False`` and ``deny=False`` abstain: another policy source may
    still allow the request, and if none does it is denied. ``deny=True`` is
    an explicit deny, which wins over every allow of every source.
    """

    allow: bool = False
    deny: bool = False
    reason: str = ""
    """Why, in words an operator can act on (logged, shown by explain)."""

    ttl_s: Optional[int] = None
    """How long s3gate may cache the answer, in seconds; ``None``: the
    gateway's ``[cache] decision_ttl`` (never longer than that)."""

    scope_prefix: Optional[str] = None
    """The answer holds for every key of the bucket starting with this;
    ``None``: for this exact request only. ``""`` covers the whole bucket's
    keys. Only return a prefix when the answer truly does not depend on the
    rest of the key."""


@dataclass(frozen=True)
class Identity:
    """What an ``@plugin.lookup_secret`` handler knows of an access key."""

    secret: str
    """The secret access key. It stays in s3gate's control plane, which
    derives the SigV4 signing key from it."""

    principal: str
    """The principal the key belongs to."""

    groups: List[str] = field(default_factory=list)
    """The principal's groups."""

    def __repr__(self) -> str:
        return f"Identity(secret=<redacted>, principal={self.principal!r}, groups={self.groups!r})"


@dataclass(frozen=True)
class Credentials:
    """Backend credentials from an ``@plugin.bucket_credentials`` handler."""

    access_key: str
    secret_key: str
    session_token: Optional[str] = None
    """For temporary credentials; ``None`` for long-term keys."""

    per_principal: bool = True
    """These credentials are the principal's own: s3gate caches them per
    (bucket, principal). ``False``: they are the bucket's, shared by every
    principal."""

    expires_unix: Optional[int] = None
    """Unix seconds after which they stop working; s3gate asks again a
    minute before. ``None``: they do not expire."""

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key={self.access_key!r}, secret_key=<redacted>, "
            f"session_token={'<redacted>' if self.session_token else None}, "
            f"per_principal={self.per_principal!r}, expires_unix={self.expires_unix!r})"
        )

