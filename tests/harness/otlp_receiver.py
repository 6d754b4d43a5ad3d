"""A real OTLP/gRPC trace receiver for the tests: a grpcio server on
127.0.0.1:<free port> implementing opentelemetry.proto.collector.trace.v1.
TraceService/Export, which keeps every span it is sent.

Why not the OpenTelemetry Collector: it is released as a GitHub download,
not through any package registry these machines reach (crates.io, PyPI,
Debian, npm), so it cannot be installed here. This receiver speaks the same
protocol on the wire — the messages come from PyPI's opentelemetry-proto,
the project's own generated code for the OTLP .proto files — so the
gateway's exporter is the real one, talking to a real gRPC server.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclasses.dataclass
class Span:
    service: str  # resource attribute service.name
    name: str
    trace_id: str  # hex
    span_id: str  # hex
    parent_id: str  # hex, "" for a root
    kind: int
    attributes: dict[str, object]
    status_code: int  # 0 unset, 1 ok, 2 error

    def attr(self, name: str):
        return self.attributes.get(name)


def _value(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: "OtlpReceiver") -> None:
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        if not self.receiver.keep:
            count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with self.receiver._lock:
                self.receiver.span_count += count
                self.receiver.exports += 1
            return trace_service_pb2.ExportTraceServiceResponse()
        spans = []
        for rs in request.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        Span(
                            service=str(res.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            status_code=s.status.code,
                        )
                    )
        with self.receiver._lock:
            self.receiver._spans.extend(spans)
            self.receiver.span_count += len(spans)
            self.receiver.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Start with `with OtlpReceiver() as rx:`; point the gateway at
    `rx.endpoint` (`--otlp-endpoint`). With `keep=False` (bench/) spans are
    only counted, in `span_count`, not kept."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.span_count = 0
        self.exports = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    def wait_for(self, pred, what: str, timeout: float = 20) -> list[Span]:
        """Polls until `pred(spans)` holds; returns the spans then."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if pred(spans):
                return spans
            if time.monotonic() > deadline:
                names = [(s.service, s.name, s.trace_id[:8]) for s in spans]
                raise AssertionError(f"timed out waiting for {what}; received: {names}")
            time.sleep(0.05)

    def close(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> "OtlpReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
