"""Write s3gate plugins in Python.

s3gate's control plane calls a plugin over gRPC (``s3gate.plugin.v1.Plugin``)
for three things, each a plain function registered with a decorator::

    import s3gate_plugin

    plugin = s3gate_plugin.Plugin()

    @plugin.authorize
    def authorize(req: s3gate_plugin.AuthorizeRequest) -> bool:
        return req.principal == "alice" and req.bucket == "reports"

    @plugin.lookup_secret
    def lookup_secret(access_key: str):
        return s3gate_plugin.Identity(secret="…", principal="alice", groups=["staff"])

    @plugin.bucket_credentials
    def bucket_credentials(principal: str, bucket: str):
        return s3gate_plugin.Credentials(access_key="…", secret_key="…")

    plugin.serve("127.0.0.1:50061")
"""

from ._plugin import SERVICE_NAME, HandlerError, Plugin
from ._types import AuthorizeRequest, Credentials, Decision, Identity, RequestIdentity

__all__ = [
    "SERVICE_NAME",
    "AuthorizeRequest",
    "Credentials",
    "Decision",
    "HandlerError",
    "Identity",
    "Plugin",
    "RequestIdentity",
]

__version__ = "0.1.0"
