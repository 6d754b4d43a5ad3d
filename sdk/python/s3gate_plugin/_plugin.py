"""The plugin server: decorators register handlers, ``serve`` runs them."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from concurrent import futures
from typing import Callable, Iterator, Optional, TypeVar, Union

import grpc

from ._proto import health_pb2, health_pb2_grpc, plugin_pb2, plugin_pb2_grpc
from ._types import AuthorizeRequest, Credentials, Decision, Identity, RequestIdentity

log = logging.getLogger("s3gate_plugin")

SERVICE_NAME = "s3gate.plugin.v1.Plugin"
"""The gRPC service a plugin serves (and the name its health is reported under)."""

AuthorizeHandler = Callable[[AuthorizeRequest], Union[bool, Decision]]
LookupSecretHandler = Callable[[str], Optional[Identity]]
BucketCredentialsHandler = Callable[[str, str], Optional[Credentials]]

F = TypeVar("F", bound=Callable[..., object])


class HandlerError(Exception):
    """A handler returned something that is not one of its answer types."""


class Plugin:
    """An s3gate plugin: up to three handlers, served over gRPC.

    >>> plugin = Plugin()
    >>> @plugin.authorize
    ... def allow_reads(req):
    ...     return req.action == "s3:GetObject"
    >>> plugin.serve("127.0.0.1:50061")  # doctest: +SKIP

    A method without a handler answers ``UNIMPLEMENTED``, which s3gate
    treats as "cannot decide" (503): configure only the kinds you register.
    An exception in a handler is logged and answered with ``INTERNAL``; the
    server keeps running. s3gate calls handlers from several threads at
    once: handlers must be thread-safe.
    """

    def __init__(self, max_workers: int = 16) -> None:
        """``max_workers``: how many calls are handled at the same time."""
        self.max_workers = max_workers
        self._authorize: Optional[AuthorizeHandler] = None
        self._lookup_secret: Optional[LookupSecretHandler] = None
        self._bucket_credentials: Optional[BucketCredentialsHandler] = None

    # === registration ===

    def authorize(self, fn: F) -> F:
        """Registers the decision handler: ``fn(request) -> bool | Decision``.

        ``request`` is an :class:`AuthorizeRequest`. ``True`` allows,
        ``False`` abstains (the request is denied unless another source
        allows it), ``Decision(deny=True)`` denies explicitly.
        """
        self._authorize = fn  # type: ignore[assignment]
        return fn

    def lookup_secret(self, fn: F) -> F:
        """Registers the secret lookup: ``fn(access_key) -> Identity | None``."""
        self._lookup_secret = fn  # type: ignore[assignment]
        return fn

    def bucket_credentials(self, fn: F) -> F:
        """Registers the backend credentials handler:
        ``fn(principal, bucket) -> Credentials | None``.

        ``principal`` is ``""`` when s3gate asks for the bucket's shared
        credentials. ``None``: no credentials (the request fails with 503).
        """
        self._bucket_credentials = fn  # type: ignore[assignment]
        return fn

    # === serving ===

    def server(self, address: str) -> "tuple[grpc.Server, int]":
        """Starts serving on ``address`` (``host:port``; port 0 picks one) and
        returns the started server and its port, without blocking."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers))
        plugin_pb2_grpc.add_PluginServicer_to_server(_Servicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        server.start()
        return server, port

    def serve(self, address: str, ready_file: Optional[str] = None) -> None:
        """Serves on ``address`` until SIGTERM or SIGINT (blocks).

        ``ready_file``: once listening, write ``{"grpc": "host:port"}`` there
        (for supervisors and tests that start the plugin on port 0).
        """
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        server, port = self.server(address)
        host = address.rsplit(":", 1)[0]
        bound = f"{host}:{port}"
        stopped = threading.Event()

        def stop(signum: int, _frame: object) -> None:
            log.info("s3gate plugin stopping (signal %d)", signum)
            stopped.set()

        # Before announcing readiness: a supervisor may stop us right after.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        log.info("s3gate plugin listening on %s", bound)
        if ready_file:
            # Written whole, then renamed: readers never see half a file.
            tmp = f"{ready_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"grpc": bound}, f)
            os.replace(tmp, ready_file)
        # A timed wait, so signal handlers run promptly on every platform.
        while not stopped.wait(0.5):
            pass
        server.stop(grace=2).wait()


# === impl the gRPC services ===


def _request(msg: plugin_pb2.AuthorizeRequest) -> AuthorizeRequest:
    return AuthorizeRequest(
        principal=msg.principal,
        groups=tuple(msg.groups),
        identity=RequestIdentity(source=msg.identity.source, claims=dict(msg.identity.claims)),
        action=msg.action,
        bucket=msg.bucket,
        key=msg.key,
        prefix=msg.prefix,
        kind=msg.kind,
        method=msg.method,
        client_ip=msg.client_ip,
        time=msg.time,
        headers=dict(msg.headers),
    )


def _decision(answer: object) -> plugin_pb2.AuthorizeResponse:
    # bool first: a Decision is not a bool, and True/False are exactly bools.
    if isinstance(answer, bool):
        return plugin_pb2.AuthorizeResponse(allow=answer)
    if isinstance(answer, Decision):
        resp = plugin_pb2.AuthorizeResponse(allow=answer.allow, deny=answer.deny, reason=answer.reason)
        if answer.ttl_s is not None:
            if answer.ttl_s < 0:
                raise HandlerError(f"ttl_s must not be negative, got {answer.ttl_s}")
            resp.ttl_s = int(answer.ttl_s)
        if answer.scope_prefix is not None:
            resp.scope_prefix = answer.scope_prefix
        return resp
    raise HandlerError(f"authorize must return a bool or a Decision, got {type(answer).__name__}")


class _Servicer(plugin_pb2_grpc.PluginServicer):
    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin

    def Authorize(self, request, context):  # noqa: N802 - gRPC method name
        handler = self._plugin._authorize
        if handler is None:
            return _unimplemented(context, "authorize")
        try:
            return _decision(handler(_request(request)))
        except Exception:  # noqa: BLE001 - a handler's failure is an answer, not a crash
            log.exception("authorize handler failed (principal=%s, bucket=%s)", request.principal, request.bucket)
            context.abort(grpc.StatusCode.INTERNAL, "the authorize handler failed")

    def LookupSecret(self, request, context):  # noqa: N802
        handler = self._plugin._lookup_secret
        if handler is None:
            return _unimplemented(context, "lookup_secret")
        try:
            found = handler(request.access_key)
            if found is None:
                return plugin_pb2.LookupSecretResponse(found=False)
            if not isinstance(found, Identity):
                raise HandlerError(f"lookup_secret must return an Identity or None, got {type(found).__name__}")
            return plugin_pb2.LookupSecretResponse(
                found=True, secret=found.secret, principal=found.principal, groups=list(found.groups)
            )
        except Exception:  # noqa: BLE001
            # The access key is an identifier, not a secret; the secret is
            # never logged.
            log.exception("lookup_secret handler failed (access_key=%s)", request.access_key)
            context.abort(grpc.StatusCode.INTERNAL, "the lookup_secret handler failed")

    def BucketCredentials(self, request, context):  # noqa: N802
        handler = self._plugin._bucket_credentials
        if handler is None:
            return _unimplemented(context, "bucket_credentials")
        try:
            creds = handler(request.principal, request.bucket)
            if creds is None:
                return plugin_pb2.BucketCredentialsResponse(found=False)
            if not isinstance(creds, Credentials):
                raise HandlerError(
                    f"bucket_credentials must return Credentials or None, got {type(creds).__name__}"
                )
            return plugin_pb2.BucketCredentialsResponse(
                found=True,
                access_key=creds.access_key,
                secret_key=creds.secret_key,
                session_token=creds.session_token or "",
                per_principal=creds.per_principal,
                expires_unix=creds.expires_unix or 0,
            )
        except Exception:  # noqa: BLE001
            log.exception(
                "bucket_credentials handler failed (principal=%s, bucket=%s)", request.principal, request.bucket
            )
            context.abort(grpc.StatusCode.INTERNAL, "the bucket_credentials handler failed")


def _unimplemented(context: grpc.ServicerContext, what: str) -> None:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"this plugin registered no {what} handler")


class _Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: SERVING for "" and the plugin service while the
    process runs."""

    _KNOWN = ("", SERVICE_NAME)

    def Check(self, request, context):  # noqa: N802
        if request.service not in self._KNOWN:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    def Watch(self, request, context) -> Iterator[health_pb2.HealthCheckResponse]:  # noqa: N802
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if request.service in self._KNOWN
            else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        )
        yield health_pb2.HealthCheckResponse(status=status)
        done = threading.Event()
        context.add_callback(done.set)
        done.wait()
