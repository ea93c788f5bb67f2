"""A grpcio client and server instrumented the way applications in a mesh
are: OpenTelemetry's Python SDK with opentelemetry-instrumentation-grpc,
exporting spans over OTLP/gRPC.

Usage:
  otel_grpc_app.py server OTLP_ENDPOINT
      Serves gridmesh.interop.Interop/Unary on a free loopback port, prints
      `listening on 127.0.0.1:PORT`, and runs until SIGTERM (flushing its
      spans on the way out).
  otel_grpc_app.py client OTLP_ENDPOINT TARGET
      Makes one traced Unary call to TARGET, exports its span, prints
      `call ok`.

The instrumentation makes a CLIENT span around the call and sends its
context as W3C `traceparent`; the server's instrumentation makes a SERVER
span under whatever `traceparent` arrives. Between them, the sidecars'
spans must join the same trace.
"""

import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

METHOD = "/gridmesh.interop.Interop/Unary"


def tracing(service: str, endpoint: str) -> TracerProvider:
    """Every span exported as it ends (SimpleSpanProcessor: nothing waits in
    a batch when the process exits)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return provider


def identity(request: bytes) -> bytes:
    return request


def serve(endpoint: str) -> None:
    provider = tracing("python-server", endpoint)
    GrpcInstrumentorServer().instrument()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "gridmesh.interop.Interop",
        {"Unary": grpc.unary_unary_rpc_method_handler(lambda request, _context: identity(request))},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    provider.shutdown()


def call(endpoint: str, target: str) -> None:
    provider = tracing("python-client", endpoint)
    GrpcInstrumentorClient().instrument()
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary(METHOD)
        reply = unary(b"\x0a\x02hi", timeout=10)
        assert reply == b"\x0a\x02hi", reply
    # The call's CLIENT span is the last one the instrumentation ended.
    provider.force_flush()
    provider.shutdown()
    print("call ok", flush=True)


def main() -> None:
    match sys.argv[1:]:
        case ["server", endpoint]:
            serve(endpoint)
        case ["client", endpoint, target]:
            call(endpoint, target)
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
